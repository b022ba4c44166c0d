"""Membership-inference metrics on equal-size member and non-member sets (scikit-learn underneath)."""
from __future__ import annotations

import numpy as np

# scikit-learn is imported inside the functions: importing it costs ~1.5 s, which every CLI call would pay.


def tpr_at_fpr(member_scores, nonmember_scores, fpr: float) -> float:
    """Largest true-positive rate at a false-positive rate <= ``fpr`` (threshold-free, from the ROC)."""
    from sklearn.metrics import roc_curve

    truth = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    f, t, _ = roc_curve(truth, np.concatenate([member_scores, nonmember_scores]))
    return float(t[f <= fpr].max()) if np.any(f <= fpr) else 0.0


def attack_metrics(member_scores, nonmember_scores, *, threshold: float = 0.5) -> dict:
    """The paper's metrics at ``threshold`` (inference accuracy, precision, recall) and threshold-free ones.

    Scores are membership scores (higher = member); a record is called a member when score >= threshold.
    ``auc`` is the ROC AUC; ``auc_leak`` = max(auc, 1 - auc), since an attacker simply flips a score whose
    AUC is below 0.5. ``advantage`` = TPR - FPR at the threshold (Yeom et al.); ``tpr_at_1%_fpr`` and
    ``tpr_at_0.1%_fpr`` read the ROC curve at low false-positive rates.

    >>> m = attack_metrics(np.array([0.9, 0.8, 0.4]), np.array([0.1, 0.6, 0.2]))
    >>> round(m["accuracy"], 3), round(m["precision"], 3), round(m["recall"], 3), round(m["advantage"], 3)
    (0.667, 0.667, 0.667, 0.333)
    """
    from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

    s_in, s_out = np.asarray(member_scores, dtype=np.float64), np.asarray(nonmember_scores, dtype=np.float64)
    truth = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    scores = np.concatenate([s_in, s_out])
    called = scores >= threshold
    both = len(s_in) > 0 and len(s_out) > 0
    auc = float(roc_auc_score(truth, scores)) if both else float("nan")
    return {"accuracy": float(accuracy_score(truth, called)),
            "precision": float(precision_score(truth, called, zero_division=0)),
            "recall": float(recall_score(truth, called, zero_division=0)),
            "advantage": float(called[: len(s_in)].mean() - called[len(s_in):].mean()) if both else float("nan"),
            "auc": auc, "auc_leak": max(auc, 1 - auc) if both else float("nan"),
            "tpr_at_1%_fpr": tpr_at_fpr(s_in, s_out, 0.01) if both else float("nan"),
            "tpr_at_0.1%_fpr": tpr_at_fpr(s_in, s_out, 0.001) if both else float("nan"),
            "members": int(len(s_in)), "nonmembers": int(len(s_out))}


def per_class_metrics(member_scores, member_labels, nonmember_scores, nonmember_labels, *,
                      threshold: float = 0.5) -> dict:
    """`attack_metrics` restricted to each class's records (the paper's Fig. 4, 7, 8 CDFs use these)."""
    out = {}
    m_lab, n_lab = np.asarray(member_labels), np.asarray(nonmember_labels)
    for c in np.union1d(m_lab, n_lab):
        a, b = np.asarray(member_scores)[m_lab == c], np.asarray(nonmember_scores)[n_lab == c]
        if len(a) and len(b):
            out[int(c)] = attack_metrics(a, b, threshold=threshold)
    return out
