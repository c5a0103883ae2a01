"""Command line: `python -m training --world NAME --out DIR` trains, names units and reports."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace

from service.cli import ArgumentParser

from .configs import default_config


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m training",
        description="Train a WTA encoder on random linear tasks, name its units and report how symbolic its code is.",
    )
    parser.add_argument("--world", required=True, help="'sprites', 'sortofclevr', 'tiny' (for tests), or a folder with labels.csv")
    parser.add_argument("--out", required=True, help="run directory for checkpoint, symbols.json, metrics.json and plots")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the world's default, 0)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: per world)")
    parser.add_argument("--tasks", type=int, default=None, help="number of random linear tasks (default: 256)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: 64)")
    parser.add_argument("--learning-rate", type=float, default=None, help="Adam learning rate (default: per world)")
    parser.add_argument("--pool-size", type=int, default=None, help="training images rendered up front (default: per world)")
    parser.add_argument("--calibration-size", type=int, default=None, help="labelled images that name the units (default: 5000)")
    parser.add_argument("--test-size", type=int, default=None, help="fresh images for the reported metrics (default: 5000)")
    parser.add_argument(
        "--wta-mode",
        choices=["softmax", "gumbel", "straight_through", "gumbel_straight_through"],
        default=None,
        help="training estimator for the argmax (default: per world)",
    )
    parser.add_argument("--temperature-start", type=float, default=None, help="softmax temperature at step 0")
    parser.add_argument("--temperature-end", type=float, default=None, help="softmax temperature at the last step")
    parser.add_argument("--group-scale", type=int, default=None, help="units per categorical group = scale x values (default: 1)")
    parser.add_argument("--head", choices=["axial", "dense"], default=None, help="how groups read the encoder (default: axial)")
    parser.add_argument("--normalise-logits", choices=["batch", "group", "none"], default=None, help="pre-WTA normalisation (default: batch)")
    parser.add_argument("--overlap-weight", type=float, default=None, help="weight of the channel-mixture overlap penalty (default: per world)")
    parser.add_argument("--kernel-init", choices=["parabola", "box"], default=None, help="starting shape of position kernels (default: parabola)")
    parser.add_argument("--no-spread-attention", action="store_true", help="start all groups on random channel mixtures (ablation)")
    parser.add_argument("--colour-centres", type=int, default=None, help="RGB tuning-curve units per pixel, 0 for none (default: 16)")
    parser.add_argument("--restarts", type=int, default=None, help="networks to start; the best by task accuracy continues (default: per world)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the dense-bottleneck baseline")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


# Flags that must be above zero, and flags that must not be below it.
_POSITIVE = ("steps", "tasks", "batch_size", "calibration_size", "test_size", "restarts", "group_scale",
             "learning_rate", "temperature_start", "temperature_end")
_NON_NEGATIVE = ("pool_size", "overlap_weight", "colour_centres")


def _invalid_value(args: argparse.Namespace) -> str | None:
    """Return an error line for the first flag with a value out of range, or None."""
    for name in _POSITIVE + _NON_NEGATIVE:
        value = getattr(args, name)
        if value is None or value > 0 or (value == 0 and name in _NON_NEGATIVE):
            continue
        bound = "above 0" if name in _POSITIVE else "0 or more"
        return f"invalid --{name.replace('_', '-')} {value}: use a value {bound}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _invalid_value(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        from .train import run_training
    except ImportError as error:  # torch is only in the 'train' extra
        print(f"error: training needs the 'train' extra ({error}); install with: pip install -e '.[train]'", file=sys.stderr)
        return 2

    config = default_config(args.world)
    overrides = {
        "seed": args.seed,
        "steps": args.steps,
        "tasks": args.tasks,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "pool_size": args.pool_size,
        "calibration_size": args.calibration_size,
        "test_size": args.test_size,
        "restarts": args.restarts,
        "wta_mode": args.wta_mode,
        "temperature_start": args.temperature_start,
        "temperature_end": args.temperature_end,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    model_overrides = {
        "group_scale": args.group_scale,
        "head": args.head,
        "normalise_logits": args.normalise_logits,
        "overlap_weight": args.overlap_weight,
        "kernel_init": args.kernel_init,
        "colour_centres": args.colour_centres,
        "spread_attention": False if args.no_spread_attention else None,
    }
    config = replace(config, model=replace(config.model, **{k: v for k, v in model_overrides.items() if v is not None}))
    if args.no_baseline:
        config = replace(config, baseline=False)

    try:
        report = run_training(config, args.out, progress=not args.no_progress)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    wta = report["wta"]
    summary = {
        "out": args.out,
        "hard_task_accuracy": round(wta["hard_task_accuracy"], 4),
        "min_decode_accuracy": round(min(wta["decode_accuracy"].values()), 4),
        "single_valued_share": round(wta["single_valued_share"], 4),
        "dead_units": wta["dead_units"],
        "seconds": round(report["total_seconds"], 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
