"""Name every WTA unit by the factor value it stands for, from a labelled calibration set.

Each group is matched to the factor it shares the most normalised mutual information with
(one factor per group, greedily). Each unit of a matched group is then named by the value
that most often held when it won. A unit that wins fewer than `min_wins` times is dead;
one whose most frequent value has a share below `min_purity` is mixed. Both are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .worlds import Factor

__all__ = ["UnitName", "GroupName", "Naming", "name_units", "normalised_mutual_information", "decode"]


@dataclass
class UnitName:
    value: int | None  # index into the factor's values; None for dead units or unmatched groups
    status: str  # named | mixed | dead
    purity: float
    wins: int


@dataclass
class GroupName:
    factor: int | None  # index into the world's factors; None when the group names no factor
    nmi: float
    units: list[UnitName]


@dataclass
class Naming:
    groups: list[GroupName]

    def counts(self) -> dict[str, int]:
        totals = {"named": 0, "mixed": 0, "dead": 0}
        for group in self.groups:
            for unit in group.units:
                totals[unit.status] += 1
        return totals


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, size_a: int, size_b: int) -> float:
    """I(a; b) / H(b) for two integer label vectors: the share of b's entropy that a explains."""
    joint = np.zeros((size_a, size_b), dtype=np.float64)
    np.add.at(joint, (a, b), 1.0)
    h_b = _entropy(joint.sum(axis=0))
    if h_b == 0.0:
        return 0.0
    mutual = _entropy(joint.sum(axis=1)) + h_b - _entropy(joint.ravel())
    return float(mutual / h_b)


def name_units(
    winners: np.ndarray,
    labels: np.ndarray,
    group_sizes: list[int],
    factors: list[Factor],
    *,
    min_wins: int = 3,
    min_purity: float = 0.9,
) -> Naming:
    """Match groups to factors and name their units from calibration winners `[n, groups]`."""
    nmi = np.array(
        [
            [normalised_mutual_information(winners[:, g], labels[:, f], size, factor.size) for f, factor in enumerate(factors)]
            for g, size in enumerate(group_sizes)
        ]
    )
    assignment: dict[int, int] = {}
    taken: set[int] = set()
    for flat in np.argsort(-nmi, axis=None):
        g, f = np.unravel_index(flat, nmi.shape)
        if g in assignment or f in taken or nmi[g, f] <= 0.0:
            continue
        assignment[int(g)] = int(f)
        taken.add(int(f))

    groups: list[GroupName] = []
    for g, size in enumerate(group_sizes):
        f = assignment.get(g)
        units: list[UnitName] = []
        for u in range(size):
            won = winners[:, g] == u
            wins = int(won.sum())
            if wins < min_wins:
                units.append(UnitName(None, "dead", 0.0, wins))
                continue
            if f is None:
                units.append(UnitName(None, "mixed", 0.0, wins))
                continue
            counts = np.bincount(labels[won, f], minlength=factors[f].size)
            value = int(counts.argmax())
            purity = float(counts[value] / wins)
            units.append(UnitName(value, "named" if purity >= min_purity else "mixed", purity, wins))
        groups.append(GroupName(f, float(nmi[g, f]) if f is not None else 0.0, units))
    return Naming(groups)


def decode(winners: np.ndarray, naming: Naming, factor_count: int) -> np.ndarray:
    """Turn winners `[n, groups]` into factor value indices `[n, factors]`; -1 where unnamed."""
    decoded = np.full((winners.shape[0], factor_count), -1, dtype=np.int64)
    for g, group in enumerate(naming.groups):
        if group.factor is None:
            continue
        table = np.array([-1 if unit.value is None else unit.value for unit in group.units], dtype=np.int64)
        decoded[:, group.factor] = table[winners[:, g]]
    return decoded
