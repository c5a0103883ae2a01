"""Multi-task training of the WTA network, unit naming, and the report of how symbolic its code is.

The recipe follows Gutheil, Hitzginger and Legenstein (2026): labels are random linear
tasks over the one-hot factors, the network never sees the factors, and a labelled
calibration set names the units afterwards. The same network with a dense bottleneck,
decoded by linear probes, is trained alongside as the baseline.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics as M
from .model import ModelConfig, WTANet, group_specs
from .naming import Naming, decode, name_units
from .report import save_run
from .tasks import Tasks, make_tasks
from .worlds import LabelledFolderWorld, World, make_world
from .wta import WTAMode

__all__ = ["TrainConfig", "TrainedModel", "train_network", "run_training", "holdout_mask"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    world: str = "sortofclevr"
    seed: int = 0
    steps: int = 4000
    batch_size: int = 64
    learning_rate: float = 3e-3  # Adam; cosine decay to 5% over the run
    pool_size: int = 30000  # training images rendered once up front (generation is the slow part)
    tasks: int = 256  # random linear tasks; enough to pin down every factor value
    wta_mode: WTAMode = "softmax"
    temperature_start: float = 1.0
    temperature_end: float = 0.05  # annealed geometrically; low end closes the soft/hard gap
    calibration_size: int = 5000  # labelled images used to name units
    test_size: int = 5000  # fresh images for every reported metric
    eval_every: int = 250  # steps between points on the training curves
    baseline: bool = True  # also train the dense-bottleneck baseline
    baseline_steps: int | None = None  # defaults to `steps`
    few_shot_sizes: tuple[int, ...] = (16, 64, 256)  # examples per new task for the probe comparison
    # Groups can settle on a poor assignment of units to values (a local minimum), so several
    # networks start and the best by task accuracy after `restart_steps` continues.
    restarts: int = 1
    restart_steps: int = 200
    model: ModelConfig = field(default_factory=ModelConfig)

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainConfig":
        raw = dict(raw)
        model = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.pop("model", {}).items()})
        if "few_shot_sizes" in raw:
            raw["few_shot_sizes"] = tuple(raw["few_shot_sizes"])
        return cls(model=model, **raw)


@dataclass
class TrainedModel:
    net: WTANet
    naming: Naming | None
    curves: list[dict[str, float]]
    seconds: float


def holdout_mask(world: World, labels: np.ndarray) -> np.ndarray:
    """Factor combinations kept out of training, to test generalisation to unseen combinations.

    sprites: triangles that are red or blue, and green crosses. sortofclevr: red circles
    whose centre lies left of x = 25. Labelled folders hold nothing out.
    """
    names = [f.name for f in world.factors]
    if world.name == "sprites":
        shape, colour = labels[:, names.index("shape")], labels[:, names.index("colour")]
        values = world.factors[names.index("colour")].values
        triangle, cross = 2, 3
        return ((shape == triangle) & np.isin(colour, [values.index("red"), values.index("blue")])) | (
            (shape == cross) & (colour == values.index("green"))
        )
    if world.name == "sortofclevr":
        circle = 1
        low = world.factors[names.index("red.x")].pixel_ranges[0][0]  # type: ignore[index]
        return (labels[:, names.index("red.shape")] == circle) & (labels[:, names.index("red.x")] + low < 25)
    return np.zeros(labels.shape[0], dtype=bool)


def _sample_excluding(world: World, n: int, rng: np.random.Generator, keep: Callable[[np.ndarray], np.ndarray]):
    """Draw `n` images whose labels satisfy `keep`, rendering in chunks."""
    images, labels = [], []
    total = 0
    while total < n:
        chunk_images, chunk_labels = world.sample(min(4096, 2 * (n - total) + 64), rng)
        chosen = keep(chunk_labels)
        images.append(chunk_images[chosen])
        labels.append(chunk_labels[chosen])
        total += int(chosen.sum())
    return np.concatenate(images)[:n], np.concatenate(labels)[:n]


def _make_splits(world: World, config: TrainConfig, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Training pool, calibration and test sets, plus held-out combinations where the world has them.

    Generated worlds render fresh images for each split. A labelled folder is shuffled and
    split 80/10/10; it needs at least 10 images.
    """
    if isinstance(world, LabelledFolderWorld):
        count = len(world.images)
        if count < 10:
            raise ValueError(f"{world.folder}: {count} labelled images; training needs at least 10")
        order = rng.permutation(count)
        cut_train, cut_calibration = int(0.8 * count), int(0.9 * count)
        parts = {"train": order[:cut_train], "calibration": order[cut_train:cut_calibration], "test": order[cut_calibration:]}
        return {name: (world.images[index], world.labels[index]) for name, index in parts.items()}

    seen = lambda labels: ~holdout_mask(world, labels)  # noqa: E731
    unseen = lambda labels: holdout_mask(world, labels)  # noqa: E731
    splits = {
        "train": _sample_excluding(world, config.pool_size, rng, seen),
        "calibration": _sample_excluding(world, config.calibration_size, rng, seen),
        "test": _sample_excluding(world, config.test_size, rng, seen),
    }
    if holdout_mask(world, world.sample_labels(2000, rng)).any():
        splits["holdout"] = _sample_excluding(world, 1000, rng, unseen)
    return splits


def _temperature(config: TrainConfig, step: int) -> float:
    fraction = step / max(1, config.steps - 1)
    return config.temperature_start * (config.temperature_end / config.temperature_start) ** fraction


@torch.no_grad()
def run_network(net: WTANet, images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hard winners `[n, G]`, code fed to the readout `[n, units]` and task logits `[n, T]`."""
    net.eval()
    winners, codes, task_logits = [], [], []
    for start in range(0, len(images), batch):
        out = net(torch.from_numpy(images[start : start + batch]), mode="hard")
        winners.append(out.winners.numpy())
        codes.append(out.code.numpy())
        task_logits.append(out.task_logits.numpy())
    return np.concatenate(winners), np.concatenate(codes), np.concatenate(task_logits)


@torch.no_grad()
def _soft_task_accuracy(net: WTANet, images: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Task accuracy with the relaxed code at the current temperature (the code training sees)."""
    net.eval()
    out = net(torch.from_numpy(images), mode="softmax", temperature=temperature)
    return float(((out.task_logits.numpy() > 0) == (targets > 0.5)).mean())


class _Run:
    """One network with its optimiser and schedule, advanced step by step."""

    def __init__(self, world: World, model_config: ModelConfig, config: TrainConfig, steps: int, init_images: np.ndarray, seed: int) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.net = WTANet(model_config, group_specs(world.factors, model_config.group_scale), world.height, world.width)
        self.net.initialise_colours(torch.from_numpy(init_images))
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=config.learning_rate)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimiser, lambda s: 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))
        )
        self.rng = np.random.default_rng(seed + 1)
        self.running = 0.0

    def step(self, step: int, images: np.ndarray, targets: np.ndarray) -> float:
        net, config = self.net, self.config
        net.train()
        temperature = _temperature(config, step)
        chosen = self.rng.integers(0, len(images), size=config.batch_size)
        out = net(torch.from_numpy(images[chosen]), mode=config.wta_mode, temperature=temperature)
        loss = F.binary_cross_entropy_with_logits(out.task_logits, torch.from_numpy(targets[chosen]))
        if net.config.overlap_weight:
            loss = loss + net.config.overlap_weight * net.assignment_overlap()
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.schedule.step()
        self.running = 0.98 * self.running + 0.02 * loss.item() if step else loss.item()
        return temperature


def train_network(
    world: World,
    tasks: Tasks,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    config: TrainConfig,
    *,
    bottleneck: str = "wta",
    steps: int | None = None,
    progress: bool = False,
    monitor: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainedModel:
    """Train one network on the tasks; `monitor` (images, labels) feeds the curves and restarts.

    With `config.restarts > 1`, that many networks train for `config.restart_steps` steps and
    the one with the best hard-code task accuracy on the monitor images continues. Task
    accuracy needs no factor labels, so the choice uses only what training may see.
    """
    steps = config.steps if steps is None else steps
    model_config = ModelConfig(**{**asdict(config.model), "bottleneck": bottleneck, "tasks": len(tasks.thresholds)})
    targets = tasks.labels(train_labels)
    monitor = monitor if monitor is not None else (train_images[:500], train_labels[:500])
    monitor_targets = tasks.labels(monitor[1])
    init_images = train_images[: min(len(train_images), 2000)]

    def hard_accuracy(run: _Run) -> float:
        _, _, logits = run_network(run.net, monitor[0])
        return float(((logits > 0) == (monitor_targets > 0.5)).mean())

    restarts = max(1, config.restarts) if bottleneck == "wta" else 1
    trial_steps = min(config.restart_steps, steps) if restarts > 1 else 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps + (restarts - 1) * trial_steps, desc=f"train {bottleneck}", unit="step", dynamic_ncols=True)
    started = time.perf_counter()

    candidates = []
    for attempt in range(restarts):
        run = _Run(world, model_config, config, steps, init_images, seed=config.seed * 1000 + attempt)
        for step in range(trial_steps):
            run.step(step, train_images, targets)
            if bar is not None:
                bar.update(1)
        candidates.append((hard_accuracy(run) if restarts > 1 else 0.0, attempt, run))
    best_accuracy, best_attempt, run = max(candidates, key=lambda item: (item[0], -item[1]))
    if restarts > 1:
        log.info("restart %d of %d kept (hard task accuracy %.4f after %d steps)", best_attempt + 1, restarts, best_accuracy, trial_steps)

    curves: list[dict[str, float]] = []
    for step in range(trial_steps, steps):
        temperature = run.step(step, train_images, targets)
        if step % config.eval_every == 0 or step == steps - 1:
            point = {
                "step": step,
                "loss": run.running,
                "temperature": temperature,
                "hard_task_accuracy": hard_accuracy(run),
                "soft_task_accuracy": _soft_task_accuracy(run.net, monitor[0], monitor_targets, temperature),
                "seconds": time.perf_counter() - started,
            }
            curves.append(point)
            log.info(
                "%s step %d: loss %.4f, hard task accuracy %.4f, soft %.4f",
                bottleneck, step, run.running, point["hard_task_accuracy"], point["soft_task_accuracy"],
            )
            if bar is not None:
                bar.set_postfix(loss=f"{run.running:.3f}", hard=f"{point['hard_task_accuracy']:.3f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return TrainedModel(run.net, None, curves, time.perf_counter() - started)


def _decode_report(decoded: np.ndarray, labels: np.ndarray, world: World) -> dict[str, float]:
    return {factor.name: float((decoded[:, f] == labels[:, f]).mean()) for f, factor in enumerate(world.factors)}


def _standardise(train_x: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both feature sets by the training set's per-feature mean and standard deviation."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    return (train_x - mean) / std, (x - mean) / std


def _probe_decode(train_x: np.ndarray, train_labels: np.ndarray, x: np.ndarray, world: World) -> np.ndarray:
    """Decode every factor from dense features with one ridge probe per factor."""
    train_z, z = _standardise(train_x, x)
    decoded = np.zeros((x.shape[0], len(world.factors)), dtype=np.int64)
    for f, factor in enumerate(world.factors):
        weights = M.ridge_probe(train_z, train_labels[:, f], factor.size)
        decoded[:, f] = np.argmax(M.add_bias(z) @ weights, axis=1)
    return decoded


def _few_shot(
    world: World,
    features: dict[str, tuple[np.ndarray, np.ndarray]],
    calibration_labels: np.ndarray,
    test_labels: np.ndarray,
    config: TrainConfig,
) -> dict[str, dict[str, float]]:
    """Mean accuracy of linear probes on 32 new random tasks, learnt from few examples."""
    sizes = [f.size for f in world.factors]
    new_tasks = make_tasks(32, sizes, calibration_labels, seed=config.seed + 1000)
    train_targets = new_tasks.labels(calibration_labels).astype(np.int64)
    test_targets = new_tasks.labels(test_labels).astype(np.int64)
    rng = np.random.default_rng(config.seed + 2000)
    report: dict[str, dict[str, float]] = {}
    for name, (train_x, test_x) in features.items():
        train_z, test_z = _standardise(train_x, test_x)
        test_z = M.add_bias(test_z)
        scores = {}
        for n in config.few_shot_sizes:
            accuracies = []
            chosen = rng.choice(len(train_x), size=min(n, len(train_x)), replace=False)
            for t in range(new_tasks.weights.shape[0]):
                weights = M.ridge_probe(train_z[chosen], train_targets[chosen, t], 2, regulariser=1.0)
                predicted = np.argmax(test_z @ weights, axis=1)
                accuracies.append((predicted == test_targets[:, t]).mean())
            scores[str(n)] = float(np.mean(accuracies))
        report[name] = scores
    return report


def run_training(config: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Train, name units, evaluate, and write checkpoint, symbols, metrics and plots to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = np.random.default_rng(config.seed)
    world = make_world(config.world)
    sizes = [f.size for f in world.factors]
    started = time.perf_counter()

    # Data: tasks balanced on the prior; combinations in the holdout never reach training.
    tasks = make_tasks(config.tasks, sizes, world.sample_labels(20000, rng), seed=config.seed)
    splits = _make_splits(world, config, rng)
    train_images, train_labels = splits["train"]
    calibration_images, calibration_labels = splits["calibration"]
    test_images, test_labels = splits["test"]
    held_images, held_labels = splits.get("holdout", (None, None))
    monitor = (test_images[:1000], test_labels[:1000])
    log.info("rendered %d training images in %.1f s", len(train_images), time.perf_counter() - started)

    # The WTA network and the names of its units.
    trained = train_network(world, tasks, train_images, train_labels, config, progress=progress, monitor=monitor)
    calibration_winners, _, _ = run_network(trained.net, calibration_images)
    naming = name_units(calibration_winners, calibration_labels, trained.net.sizes, world.factors)
    trained.naming = naming

    test_winners, test_code, test_logits = run_network(trained.net, test_images)
    test_targets = tasks.labels(test_labels)
    decoded = decode(test_winners, naming, len(world.factors))
    auc = M.unit_value_auc(test_winners, test_labels, trained.net.sizes, world.factors)
    counts = naming.counts()
    units = sum(trained.net.sizes)
    wta_report = {
        "hard_task_accuracy": float(((test_logits > 0) == (test_targets > 0.5)).mean()),
        "soft_task_accuracy": _soft_task_accuracy(trained.net, test_images[:1000], test_targets[:1000], config.temperature_end),
        "decode_accuracy": _decode_report(decoded, test_labels, world),
        "single_valued_share": M.single_valued_share(auc),
        "mig": M.mutual_information_gap(test_winners, test_labels, trained.net.sizes, world.factors),
        "units": units,
        "named_units": counts["named"],
        "mixed_units": counts["mixed"],
        "dead_units": counts["dead"],
        "unmatched_groups": sum(1 for g in naming.groups if g.factor is None),
        "train_seconds": trained.seconds,
    }
    if held_images is not None:
        held_winners, _, _ = run_network(trained.net, held_images)
        wta_report["holdout_decode_accuracy"] = _decode_report(decode(held_winners, naming, len(world.factors)), held_labels, world)

    report: dict = {"world": world.name, "seed": config.seed, "config": asdict(config), "wta": wta_report}
    calibration_code = M.winner_code(calibration_winners, trained.net.sizes)
    features = {"wta": (calibration_code, M.winner_code(test_winners, trained.net.sizes))}

    # The dense baseline, decoded by linear probes fitted on the calibration set.
    if config.baseline:
        dense = train_network(
            world, tasks, train_images, train_labels, config,
            bottleneck="dense", steps=config.baseline_steps, progress=progress, monitor=monitor,
        )
        _, dense_calibration, _ = run_network(dense.net, calibration_images)
        _, dense_test, dense_logits = run_network(dense.net, test_images)
        dense_report = {
            "task_accuracy": float(((dense_logits > 0) == (test_targets > 0.5)).mean()),
            "decode_accuracy": _decode_report(_probe_decode(dense_calibration, calibration_labels, dense_test, world), test_labels, world),
            "train_seconds": dense.seconds,
        }
        if held_images is not None:
            _, dense_held, _ = run_network(dense.net, held_images)
            held_decoded = _probe_decode(dense_calibration, calibration_labels, dense_held, world)
            dense_report["holdout_decode_accuracy"] = _decode_report(held_decoded, held_labels, world)
        report["dense"] = dense_report
        features["dense"] = (dense_calibration, dense_test)
        report["dense_curves"] = dense.curves
    report["few_shot_task_accuracy"] = _few_shot(world, features, calibration_labels, test_labels, config)
    report["curves"] = trained.curves
    report["total_seconds"] = time.perf_counter() - started

    save_run(out, config, world, trained, report, auc)
    return report
