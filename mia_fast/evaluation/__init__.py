"""Evaluation: who sees what (threat), the attack battery, defense comparisons, reports, and the papers'
experiments (reproduce)."""

#: The AEPPT paper's experiments `mia-fast reproduce` runs (`mia_fast.evaluation.reproduce`).
#: Bai et al.'s (input perturbation) are the bai-* ones (`mia_fast.evaluation.bai`).
EXPERIMENTS = ("table2", "step-size", "adversary", "mims", "adaptive", "classes", "comparison", "bai-table2",
               "bai-table3", "bai-generators", "bai-distance", "bai-rate")
