"""Membership-inference metrics on equal-size member and non-member sets (scikit-learn underneath)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score


def attack_metrics(member_scores, nonmember_scores, *, threshold: float = 0.5) -> dict:
    """Inference accuracy, precision and recall at ``threshold`` (the paper's metrics), plus ROC AUC.

    Scores are the attack's membership probabilities; a record is called a member when score >= threshold.

    >>> m = attack_metrics(np.array([0.9, 0.8, 0.4]), np.array([0.1, 0.6, 0.2]))
    >>> round(m["accuracy"], 3), round(m["precision"], 3), round(m["recall"], 3)
    (0.667, 0.667, 0.667)
    """
    s_in, s_out = np.asarray(member_scores, dtype=np.float64), np.asarray(nonmember_scores, dtype=np.float64)
    truth = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    scores = np.concatenate([s_in, s_out])
    called = scores >= threshold
    return {"accuracy": float(accuracy_score(truth, called)),
            "precision": float(precision_score(truth, called, zero_division=0)),
            "recall": float(recall_score(truth, called, zero_division=0)),
            "auc": float(roc_auc_score(truth, scores)) if len(s_in) and len(s_out) else float("nan"),
            "members": int(len(s_in)), "nonmembers": int(len(s_out))}
