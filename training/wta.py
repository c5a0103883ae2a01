"""The winner-take-all step: one winner per group of units.

Following Gutheil, Hitzginger and Legenstein (2026), the bottleneck is split into groups and
each group emits a one-hot code of its argmax at inference. Training needs a gradient, so a
relaxation stands in for the argmax: a tempered softmax, a Gumbel-softmax, or either of them
behind a straight-through estimator (hard one-hot forward, relaxed gradient backward).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["WTAMode", "WTAOutput", "winner_take_all", "pad_groups"]

WTAMode = Literal["hard", "softmax", "gumbel", "straight_through", "gumbel_straight_through"]


class WTAOutput(NamedTuple):
    code: torch.Tensor  # [batch, groups, max_size]: the input of the readout, zero on padding
    winners: torch.Tensor  # [batch, groups]: argmax per group, lowest index on ties
    probs: torch.Tensor  # [batch, groups, max_size]: softmax at temperature 1, for confidences


def pad_groups(logits: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay flat logits `[batch, sum(sizes)]` out as `[batch, groups, max(sizes)]`.

    Padding entries are `-inf`, so they never win and get zero probability; the returned
    boolean mask `[groups, max_size]` marks the real units.
    """
    batch = logits.shape[0]
    width = max(sizes)
    mask = torch.zeros(len(sizes), width, dtype=torch.bool, device=logits.device)
    for g, size in enumerate(sizes):
        mask[g, :size] = True
    padded = logits.new_full((batch, len(sizes), width), float("-inf"))
    padded[:, mask] = logits
    return padded, mask


def winner_take_all(
    logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    mode: WTAMode = "hard",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> WTAOutput:
    """Apply WTA per group to padded logits `[batch, groups, max_size]`.

    `mask` (`[groups, max_size]`, from `pad_groups`) marks real units; without it every
    entry is a unit.
    `hard` returns the one-hot argmax, with no gradient. `softmax` and `gumbel` return the
    relaxed code at `temperature`. The `*straight_through` modes return the hard code in
    the forward pass with the relaxed code's gradient. Ties go to the lowest index,
    as `torch.argmax` returns the first maximal value. Non-finite logits are mapped to
    finite values first (NaN to the lowest value) so a winner is always a real unit.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    finite = torch.nan_to_num(logits.float(), nan=-3.0e38, posinf=3.0e38, neginf=-3.0e38)
    if mask is not None:
        finite = finite.masked_fill(~mask, float("-inf"))

    winners = finite.argmax(dim=-1)
    hard = F.one_hot(winners, finite.shape[-1]).to(finite.dtype)
    probs = torch.softmax(finite, dim=-1)
    if mode == "hard":
        return WTAOutput(hard, winners, probs)

    scores = finite
    if mode.startswith("gumbel"):
        uniform = torch.rand(finite.shape, generator=generator, device=finite.device).clamp_(1e-9, 1.0 - 1e-9)
        scores = finite - torch.log(-torch.log(uniform))
    soft = torch.softmax(scores / temperature, dim=-1)
    if mode in ("softmax", "gumbel"):
        return WTAOutput(soft, winners, probs)
    if mode in ("straight_through", "gumbel_straight_through"):
        sampled = F.one_hot(scores.argmax(dim=-1), finite.shape[-1]).to(finite.dtype)
        return WTAOutput(sampled + soft - soft.detach(), winners, probs)
    raise ValueError(f"unknown WTA mode {mode!r}")
