"""Encoder, WTA bottleneck and linear task readout, plus the dense-bottleneck baseline.

The encoder keeps full resolution so that a position can be named to the pixel. Each pixel
is described by colour tuning curves (and optional 1 x 1 layers), and the result is
summarised as mean profiles along each image axis and, through strided 3 x 3 layers, as a
global pooled summary. Position groups correlate a mixture of profile channels with a 1-D
kernel, so unit k of an x group responds to the same pattern at every column (translation
equivariance). Categorical groups of a keyed entity read per-channel statistics through a
small MLP, and other categorical groups read the global summary. Which entity a group ends
up naming is left to training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .worlds import Factor
from .wta import WTAMode, pad_groups, winner_take_all

__all__ = ["ModelConfig", "GroupSpec", "WTANet", "NetOutput", "group_specs"]


@dataclass
class ModelConfig:
    # Radial-basis colour units on each pixel, centres initialised by k-means on training pixels:
    # one unit can isolate a colour that no single linear unit can (orange lies between red and
    # yellow in RGB). 0 disables them.
    colour_centres: int = 16
    pixel_channels: tuple[int, ...] = (16,)  # full-resolution 1 x 1 layers: colour features per pixel
    strided_channels: tuple[int, ...] = (32, 48)  # 3 x 3 stride-2 layers on top: shape features
    hidden: int = 128  # width of the MLP that feeds categorical groups
    head: Literal["axial", "dense"] = "axial"  # dense: one linear map from all summaries to all logits
    bottleneck: Literal["wta", "dense"] = "wta"  # dense: the baseline, logits go straight to the readout
    group_scale: int = 1  # units per group = scale x number of values (1 is the theorem's setting)
    position_kernel: int = 17  # 1-D kernel of position groups: wider than an object plus a pixel each side
    # batch: BatchNorm (no affine) per unit, which keeps every unit winning sometimes;
    # group: standardise each group's logits per image; none: raw logits.
    normalise_logits: Literal["batch", "group", "none"] = "batch"
    # Axial head: each position group, and each categorical group of a keyed entity, reads a
    # softmax mixture of pixel channels. A penalty on the overlap of these mixtures keeps two
    # groups from settling on the same object, a local minimum that training does not leave.
    overlap_weight: float = 1.0
    keyed_hidden: int = 16  # hidden width of the small per-group MLP of keyed categorical groups
    kernel_init: Literal["parabola", "box"] = "parabola"  # starting shape of position kernels
    spread_attention: bool = True  # start groups of one kind on different colour channels
    tasks: int = 256


@dataclass(frozen=True)
class GroupSpec:
    """One WTA group: its size and, for position groups, the axis and pixel ranges of its units."""

    size: int
    axis: str | None = None
    pixel_ranges: tuple[tuple[int, int], ...] | None = None
    keyed: bool = False  # the factor belongs to one of several entities (multi-object worlds)


def group_specs(factors: list[Factor], scale: int = 1) -> list[GroupSpec]:
    """Build one group per factor. Position groups keep one unit per value so units map to pixels."""
    specs = []
    for factor in factors:
        keyed = factor.entity is not None
        if factor.axis is not None:
            specs.append(GroupSpec(factor.size, factor.axis, factor.pixel_ranges, keyed))
        else:
            specs.append(GroupSpec(factor.size * scale, keyed=keyed))
    return specs


def _bin_layout(group: GroupSpec) -> tuple[int, int, int]:
    """Return (first pixel, bins, bin width) of a position group with contiguous equal bins."""
    ranges = group.pixel_ranges
    if not ranges:
        raise ValueError("a position group needs pixel ranges")
    width = ranges[0][1] - ranges[0][0]
    for k, (lo, hi) in enumerate(ranges):
        if hi - lo != width or lo != ranges[0][0] + k * width:
            raise ValueError(f"position bins must be contiguous and of equal width, got {ranges}")
    return ranges[0][0], len(ranges), width


class ColourBasis(nn.Module):
    """Gaussian tuning curves over RGB: unit k responds to pixels near colour centre k."""

    def __init__(self, centres: int) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.rand(centres, 3) * 2.0 - 1.0)  # in the [-1, 1] input scale
        self.log_width = nn.Parameter(torch.full((centres,), math.log(0.15)))

    @torch.no_grad()
    def initialise(self, pixels: torch.Tensor) -> None:
        """Place centres on distinct colours of sample pixels `[n, 3]` (scaled to [-1, 1]).

        Colours are quantised to steps of 1/16 of the range, rare ones (under 0.05% of the
        pixels: noise and antialiased edges) are dropped, and centres are chosen by farthest-point
        sampling from the most common colour. Plain k-means would spend most centres on the
        background, which covers most pixels.
        """
        quantised = torch.round((pixels + 1.0) * 8.0) / 8.0 - 1.0
        colours, counts = torch.unique(quantised, dim=0, return_counts=True)
        keep = counts >= max(1, int(0.0005 * pixels.shape[0]))
        common, common_counts = colours[keep], counts[keep]
        centres = [common[int(common_counts.argmax())]]
        distance = torch.cdist(common, centres[0][None]).squeeze(1)
        while len(centres) < self.centres.shape[0] and distance.max() > 0:
            far = int(distance.argmax())
            centres.append(common[far])
            distance = torch.minimum(distance, torch.cdist(common, common[far][None]).squeeze(1))
        count = len(centres)
        self.centres[:count] = torch.stack(centres)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ||x - c||^2 per pixel and centre, via a 1 x 1 convolution: [B, 3, H, W] -> [B, K, H, W].
        cross = F.conv2d(x, self.centres[:, :, None, None])
        distance = x.pow(2).sum(dim=1, keepdim=True) - 2.0 * cross + self.centres.pow(2).sum(dim=1)[None, :, None, None]
        width = torch.exp(self.log_width)[None, :, None, None]
        return torch.exp(-distance.clamp_min(0.0) / (2.0 * width * width))


def _standardise_groups(padded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give each group's logits zero mean and unit variance per image; argmax is unchanged."""
    counts = mask.sum(dim=1).to(padded.dtype)  # [G]
    values = padded.masked_fill(~mask, 0.0)
    mean = values.sum(dim=2) / counts
    centred = (values - mean[..., None]).masked_fill(~mask, 0.0)
    std = (centred.pow(2).sum(dim=2) / counts).add(1e-5).sqrt()
    return (centred / std[..., None]).masked_fill(~mask, float("-inf"))


class NetOutput(NamedTuple):
    logits: torch.Tensor  # [batch, groups, max_size], -inf on padding
    code: torch.Tensor  # [batch, units] what the readout saw
    winners: torch.Tensor  # [batch, groups]
    probs: torch.Tensor  # [batch, groups, max_size]
    task_logits: torch.Tensor  # [batch, tasks]


class WTANet(nn.Module):
    def __init__(self, config: ModelConfig, groups: list[GroupSpec], height: int, width: int) -> None:
        super().__init__()
        self.config = config
        self.groups = groups
        self.height, self.width = height, width
        self.sizes = [g.size for g in groups]

        layers: list[nn.Module] = []
        previous = 3
        if config.colour_centres:
            layers.append(ColourBasis(config.colour_centres))
            previous = config.colour_centres
        for channels in config.pixel_channels:
            layers += [nn.Conv2d(previous, channels, 1), nn.ReLU()]
            previous = channels
        self.pixel = nn.Sequential(*layers)
        c = previous
        layers = []
        for channels in config.strided_channels:
            layers += [nn.Conv2d(previous, channels, 3, stride=2, padding=1), nn.ReLU()]
            previous = channels
        self.strided = nn.Sequential(*layers)
        s = previous

        self.categorical = [i for i, g in enumerate(groups) if g.axis is None and not g.keyed]
        self.keyed = [i for i, g in enumerate(groups) if g.axis is None and g.keyed]
        self.axis_groups = {axis: [i for i, g in enumerate(groups) if g.axis == axis] for axis in ("x", "y")}

        if config.head == "axial":
            categorical_units = sum(groups[i].size for i in self.categorical)
            if self.categorical:
                self.mlp = nn.Sequential(nn.Linear(2 * s, config.hidden), nn.ReLU(), nn.Linear(config.hidden, categorical_units))
            k = config.position_kernel
            self.attend = nn.ParameterDict()
            self.kernels = nn.ParameterDict()
            self.kernel_bias = nn.ParameterDict()
            self.position_scale = nn.ParameterDict()
            for axis, members in self.axis_groups.items():
                if members:
                    self.attend[axis] = nn.Parameter(torch.randn(len(members), c) * 0.5)
                    # A parabola w(j) = 1 - (2j / k)^2 gives a response r(c) = const - curvature *
                    # sum_x (x - c)^2 p(x) for a profile p inside the window, which peaks at the
                    # profile's centroid: the integer centre of a symmetric object, with no plateau
                    # (a box filter has one when the object is wider than the box). Training may
                    # reshape it.
                    offsets = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
                    parabola = 1.0 - (2.0 * offsets / k) ** 2
                    start = parabola if config.kernel_init == "parabola" else (offsets.abs() <= 5).float()
                    self.kernels[axis] = nn.Parameter(start.repeat(len(members), 1, 1))
                    self.kernel_bias[axis] = nn.Parameter(torch.zeros(len(members)))
                    # Position logits are compared across units of one group, so they get one
                    # learnt scale per group instead of a per-unit BatchNorm, which would shift
                    # the argmax by per-unit statistics. exp(4) ~ 55 makes neighbouring pixels
                    # differ by about one logit for an object of about 100 px.
                    self.position_scale[axis] = nn.Parameter(torch.full((len(members),), 4.0))
            if self.keyed:
                width = max(groups[i].size for i in self.keyed)
                hidden = config.keyed_hidden
                self.attend["keyed"] = nn.Parameter(torch.randn(len(self.keyed), c) * 0.5)
                self.keyed_w1 = nn.Parameter(torch.randn(len(self.keyed), 3, hidden) / math.sqrt(3))
                self.keyed_b1 = nn.Parameter(torch.zeros(len(self.keyed), hidden))
                self.keyed_w2 = nn.Parameter(torch.randn(len(self.keyed), hidden, width) / math.sqrt(hidden))
                self.keyed_b2 = nn.Parameter(torch.zeros(len(self.keyed), width))
        else:
            summary = 2 * s + c * (height + width)
            self.dense_head = nn.Linear(summary, sum(self.sizes))

        units = sum(self.sizes)
        self.norm = nn.BatchNorm1d(units, affine=False) if config.normalise_logits == "batch" else nn.Identity()
        # Units whose logits the norm applies to: all of them, except position units of the
        # axial head under WTA, which carry their own scale. The dense baseline normalises all,
        # so its readout gets inputs of one scale.
        normalised = torch.ones(units, dtype=torch.bool)
        if config.head == "axial" and config.bottleneck == "wta":
            start = 0
            for group in groups:
                if group.axis is not None:
                    normalised[start : start + group.size] = False
                start += group.size
        self.register_buffer("normalised", normalised, persistent=False)
        self.readout = nn.Linear(units, config.tasks)
        _, mask = pad_groups(torch.zeros(1, units), self.sizes)
        self.register_buffer("mask", mask, persistent=False)

    def initialise_colours(self, images: torch.Tensor, samples: int = 100_000) -> None:
        """Run k-means for the colour basis on pixels of uint8 NHWC training images."""
        if not self.config.colour_centres:
            return
        pixels = images.reshape(-1, 3)
        chosen = torch.randint(0, pixels.shape[0], (min(samples, pixels.shape[0]),))
        basis = self.pixel[0]
        assert isinstance(basis, ColourBasis)
        basis.initialise(pixels[chosen].float() / 127.5 - 1.0)
        if self.config.head == "axial" and not self.config.pixel_channels and self.config.spread_attention:
            # Centres come in farthest-point order from the background, so channels 1, 2, ...
            # are the most distinct colours. Starting group j on channel j + 1 breaks the
            # symmetry between groups; training and the overlap penalty do the rest.
            with torch.no_grad():
                for weights in self.attend.values():
                    for j in range(weights.shape[0]):
                        weights[j, (1 + j) % weights.shape[1]] += 4.0

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Compute the global summary `[B, 2S]` and mean profiles along x `[B, C, W]` and y `[B, C, H]`.

        The summary feeds only unkeyed categorical groups and the dense head, so it is None
        (and the strided layers do not run) when neither exists, as in Sort-of-CLEVR.
        """
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # uint8 NHWC -> [-1, 1] NCHW
        pixels = self.pixel(x)  # [B, C, H, W]
        summary = None
        if self.categorical or self.config.head == "dense":
            coarse = self.strided(pixels)  # [B, S, H / 2^k, W / 2^k]
            summary = torch.cat([coarse.mean(dim=(2, 3)), coarse.amax(dim=(2, 3))], dim=1)
        return summary, pixels.mean(dim=2), pixels.mean(dim=3)

    def unit_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Flat pre-WTA logits `[B, units]`, groups in order."""
        summary, profile_x, profile_y = self.features(images)
        if self.config.head == "dense":
            flat = torch.cat([summary, profile_x.flatten(1), profile_y.flatten(1)], dim=1)
            return self.dense_head(flat)

        parts: dict[int, torch.Tensor] = {}
        if self.categorical:
            out = self.mlp(summary)
            start = 0
            for i in self.categorical:
                parts[i] = out[:, start : start + self.groups[i].size]
                start += self.groups[i].size
        if self.keyed:
            # Per channel: area, and the peaks of both profiles (scaled to about 1 for an object).
            stats = torch.stack(
                [
                    profile_x.mean(dim=2) * (self.height * self.width / 100.0),
                    profile_x.amax(dim=2) * (self.height / 10.0),
                    profile_y.amax(dim=2) * (self.width / 10.0),
                ],
                dim=2,
            )  # [B, C, 3]
            mixed = torch.einsum("gc,bcs->bgs", torch.softmax(self.attend["keyed"], dim=1), stats)
            hidden = torch.relu(torch.einsum("bgs,gsh->bgh", mixed, self.keyed_w1) + self.keyed_b1)
            out = torch.einsum("bgh,ghu->bgu", hidden, self.keyed_w2) + self.keyed_b2  # [B, G, width]
            for j, i in enumerate(self.keyed):
                parts[i] = out[:, j, : self.groups[i].size]
        for axis, profile in (("x", profile_x), ("y", profile_y)):
            members = self.axis_groups[axis]
            if not members:
                continue
            mixed = torch.einsum("gc,bcw->bgw", torch.softmax(self.attend[axis], dim=1), profile)
            k = self.config.position_kernel
            response = F.conv1d(mixed, self.kernels[axis], self.kernel_bias[axis], padding=k // 2, groups=len(members))
            response = response * torch.exp(self.position_scale[axis])[None, :, None]
            for j, i in enumerate(members):
                start, count, width = _bin_layout(self.groups[i])
                window = response[:, j, start : start + count * width]
                # A value covering several pixels (a bin) takes the soft maximum over them.
                parts[i] = window.reshape(-1, count, width).logsumexp(dim=2)
        return torch.cat([parts[i] for i in range(len(self.groups))], dim=1)

    def assignment_overlap(self) -> torch.Tensor:
        """Sum over pairs of groups of the dot product of their channel mixtures (0 when disjoint)."""
        total = torch.zeros(())
        if self.config.head != "axial":
            return total
        for weights in self.attend.values():
            mixture = torch.softmax(weights, dim=1)  # [G, C]
            gram = mixture @ mixture.T
            total = total + (gram.sum() - gram.diagonal().sum())
        return total

    def forward(self, images: torch.Tensor, mode: WTAMode = "hard", temperature: float = 1.0) -> NetOutput:
        raw = self.unit_logits(images)  # [B, units]
        flat = torch.where(self.normalised, self.norm(raw), raw)
        padded, _ = pad_groups(flat, self.sizes)  # [B, G, S]
        if self.config.normalise_logits == "group":
            padded = _standardise_groups(padded, self.mask)
            flat = padded[:, self.mask]
        if self.config.bottleneck == "dense":
            wta = winner_take_all(padded, self.mask, mode="hard")
            code = flat
        else:
            wta = winner_take_all(padded, self.mask, mode=mode, temperature=temperature)
            code = wta.code[:, self.mask]  # [B, units]
        return NetOutput(padded, code, wta.winners, wta.probs, self.readout(code))
