"""Measures of a symbolic code: unit x factor-value AUCs, single-valued units, MIG, and linear probes."""

from __future__ import annotations

import numpy as np

from .naming import normalised_mutual_information
from .tasks import one_hot
from .worlds import Factor

__all__ = ["unit_value_auc", "single_valued_share", "mutual_information_gap", "ridge_probe", "winner_code"]


def winner_code(winners: np.ndarray, group_sizes: list[int]) -> np.ndarray:
    """Build the hard WTA code: concatenated one-hot winners `[n, units]`."""
    return one_hot(winners, group_sizes)


def unit_value_auc(winners: np.ndarray, labels: np.ndarray, group_sizes: list[int], factors: list[Factor]) -> np.ndarray:
    """AUC `[units, factor values]` of each unit's win as a detector of each factor value.

    The score is the unit's hard win (0 or 1), so the AUC equals balanced accuracy:
    (true positive rate + true negative rate) / 2. A unit that names one value has AUC near
    1 for it and about 0.5 for every other value.
    """
    wins = winner_code(winners, group_sizes).astype(np.float64)  # [n, U]
    values = one_hot(labels, [f.size for f in factors]).astype(np.float64)  # [n, D]
    n = wins.shape[0]
    positives = values.sum(axis=0)  # [D]
    negatives = n - positives
    true_positive = wins.T @ values  # [U, D]
    false_positive = wins.sum(axis=0)[:, None] - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.where(positives > 0, true_positive / positives, 0.5)
        fpr = np.where(negatives > 0, false_positive / negatives, 0.5)
    return 0.5 * (tpr + 1.0 - fpr)


def single_valued_share(auc: np.ndarray, threshold: float = 0.99) -> float:
    """Share of units whose AUC reaches `threshold` for exactly one factor value."""
    return float(((auc >= threshold).sum(axis=1) == 1).mean())


def mutual_information_gap(winners: np.ndarray, labels: np.ndarray, group_sizes: list[int], factors: list[Factor]) -> float:
    """Mean over factors of the gap between the two groups that explain most of its entropy."""
    gaps = []
    for f, factor in enumerate(factors):
        scores = sorted(
            (normalised_mutual_information(winners[:, g], labels[:, f], size, factor.size) for g, size in enumerate(group_sizes)),
            reverse=True,
        )
        gaps.append(scores[0] - (scores[1] if len(scores) > 1 else 0.0))
    return float(np.mean(gaps))


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, classes: int, regulariser: float = 1e-2) -> np.ndarray:
    """Fit a linear classifier by ridge regression onto one-hot targets; returns weights with bias.

    Predict with `np.argmax(add_bias(x) @ weights, axis=1)`; features are used as given.
    """
    x = add_bias(train_x.astype(np.float64))
    y = np.zeros((train_x.shape[0], classes))
    y[np.arange(train_x.shape[0]), train_y] = 1.0
    gram = x.T @ x + regulariser * x.shape[0] * np.eye(x.shape[1])
    return np.linalg.solve(gram, x.T @ y)


def add_bias(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((x.shape[0], 1), dtype=x.dtype)], axis=1)
