"""Evaluation: who sees what (threat), the attack battery, defense comparisons, reports, and the papers'
experiments (reproduce)."""

#: The AEPPT paper's experiments `mia-fast reproduce` runs (`mia_fast.evaluation.reproduce`).
EXPERIMENTS = ("table2", "step-size", "adversary", "mims", "adaptive", "classes", "comparison")
