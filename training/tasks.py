"""Random linear binary tasks over the one-hot factor vector: `y_t = [w_t . z > theta_t]`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Tasks", "make_tasks", "one_hot"]


def one_hot(labels: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Concatenate per-factor one-hot vectors: `[n, factors]` indices -> `[n, sum(sizes)]`."""
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    z = np.zeros((labels.shape[0], int(sum(sizes))), dtype=np.float32)
    rows = np.arange(labels.shape[0])[:, None]
    z[rows, labels + offsets[None, :]] = 1.0
    return z


@dataclass
class Tasks:
    weights: np.ndarray  # [tasks, sum of factor sizes], entries ~ N(0, 1)
    thresholds: np.ndarray  # [tasks], the median of w_t . z under the world's label prior
    sizes: list[int]

    def labels(self, factor_labels: np.ndarray) -> np.ndarray:
        """Binary task targets `[n, tasks]` as float32 for a batch of factor labels."""
        scores = one_hot(factor_labels, self.sizes) @ self.weights.T
        return (scores > self.thresholds[None, :]).astype(np.float32)


def make_tasks(count: int, sizes: list[int], prior_labels: np.ndarray, seed: int) -> Tasks:
    """Draw `count` Gaussian tasks and balance each one on labels drawn from the prior."""
    if count < 1:
        raise ValueError(f"the number of tasks must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((count, int(sum(sizes)))).astype(np.float32)
    scores = one_hot(prior_labels, sizes) @ weights.T
    thresholds = np.median(scores, axis=0).astype(np.float32)
    return Tasks(weights, thresholds, list(sizes))
