"""Membership-inference metrics (scikit-learn underneath), used by attacks, defenses and the evaluation.

Besides the threshold metrics, ROC AUC is sliced by correctness (as TF Privacy does): among correctly
classified records the label says nothing more, so the AUC there is the leakage *beyond the label*,
which an output defense that keeps the label can remove. What it cannot remove is the gap attack's
accuracy, `gap_floor`.
"""
from __future__ import annotations

import numpy as np

# scikit-learn is imported inside the functions: importing it costs ~1.5 s, which every CLI call would pay.


def tpr_at_fpr(member_scores, nonmember_scores, fpr: float) -> float:
    """Largest true-positive rate at a false-positive rate <= ``fpr`` (threshold-free, from the ROC)."""
    from sklearn.metrics import roc_curve

    truth = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    f, t, _ = roc_curve(truth, np.concatenate([member_scores, nonmember_scores]))
    return float(t[f <= fpr].max()) if np.any(f <= fpr) else 0.0


def _auc(s_in: np.ndarray, s_out: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(s_in) == 0 or len(s_out) == 0:
        return float("nan")
    return float(roc_auc_score(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out]))


def gap_floor(train_accuracy: float, test_accuracy: float) -> float:
    """The gap attack's accuracy on equal-size member and non-member sets, 0.5 + (train - test) / 2: the
    floor no output defense that keeps every label can push an attacker below.

    >>> gap_floor(1.0, 0.6)
    0.7
    """
    return 0.5 + (train_accuracy - test_accuracy) / 2


def attack_metrics(member_scores, nonmember_scores, *, threshold: float = 0.5, member_correct=None,
                   nonmember_correct=None) -> dict:
    """The paper's metrics at ``threshold`` (inference accuracy, precision, recall) and threshold-free ones.

    Scores are membership scores (higher = member); a record is called a member when score >= threshold.
    ``auc`` is the ROC AUC; ``auc_leak`` = max(auc, 1 - auc), since an attacker simply flips a score whose
    AUC is below 0.5. ``advantage`` = TPR - FPR at the threshold (Yeom et al.); ``tpr_at_1%_fpr`` and
    ``tpr_at_0.1%_fpr`` and ``tpr_at_0%_fpr`` read the ROC curve at low false-positive rates.

    With ``member_correct`` / ``nonmember_correct`` (bool per record: the served label is right), also
    ``auc_correct`` and ``auc_misclassified`` (AUC within each slice) and their ``_leak`` forms.

    >>> m = attack_metrics(np.array([0.9, 0.8, 0.4]), np.array([0.1, 0.6, 0.2]))
    >>> round(m["accuracy"], 3), round(m["precision"], 3), round(m["recall"], 3), round(m["advantage"], 3)
    (0.667, 0.667, 0.667, 0.333)
    """
    from sklearn.metrics import accuracy_score, precision_score, recall_score

    s_in, s_out = np.asarray(member_scores, dtype=np.float64), np.asarray(nonmember_scores, dtype=np.float64)
    truth = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    scores = np.concatenate([s_in, s_out])
    called = scores >= threshold
    both = len(s_in) > 0 and len(s_out) > 0
    auc = _auc(s_in, s_out)
    out = {"accuracy": float(accuracy_score(truth, called)),
            "precision": float(precision_score(truth, called, zero_division=0)),
            "recall": float(recall_score(truth, called, zero_division=0)),
            "advantage": float(called[: len(s_in)].mean() - called[len(s_in):].mean()) if both else float("nan"),
            "auc": auc, "auc_leak": max(auc, 1 - auc) if both else float("nan"),
            "tpr_at_1%_fpr": tpr_at_fpr(s_in, s_out, 0.01) if both else float("nan"),
            "tpr_at_0.1%_fpr": tpr_at_fpr(s_in, s_out, 0.001) if both else float("nan"),
            "tpr_at_0%_fpr": tpr_at_fpr(s_in, s_out, 0.0) if both else float("nan"),
            "members": int(len(s_in)), "nonmembers": int(len(s_out))}
    if member_correct is not None and nonmember_correct is not None:
        c_in, c_out = np.asarray(member_correct, dtype=bool), np.asarray(nonmember_correct, dtype=bool)
        for name, a, b in (("correct", s_in[c_in], s_out[c_out]), ("misclassified", s_in[~c_in], s_out[~c_out])):
            value = _auc(a, b)
            out[f"auc_{name}"], out[f"auc_{name}_leak"] = value, max(value, 1 - value)
    return out


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
