"""Command line: `python -m export RUN_DIR --out models/NAME.onnx` exports and verifies a run."""

from __future__ import annotations

import logging
import sys

from service.cli import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m export",
        description="Export a training run to a self-describing ONNX model and verify it against PyTorch.",
    )
    parser.add_argument("run_dir", help="directory written by 'python -m training'")
    parser.add_argument("--out", required=True, help="path of the .onnx file to write")
    parser.add_argument("--top-k", type=int, default=3, help="candidates per group in the outputs, 0 for none (default: 3)")
    parser.add_argument("--card", metavar="COMMAND", help="also write NAME.md beside the model, stating COMMAND as the training command")
    parser.add_argument("--card-limits", default="", help="text of the card's Limits section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.top_k < 0:
        print(f"error: --top-k must be 0 or more, got {args.top_k}", file=sys.stderr)
        return 2
    try:
        from .onnx_export import ExportError, export_run
    except ImportError as error:
        print(f"error: export needs the 'train' extra ({error}); install with: pip install -e '.[train]'", file=sys.stderr)
        return 2
    try:
        table = export_run(args.run_dir, args.out, top_k=args.top_k)
    except (ExportError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.card:
        from .card import write_card

        print(f"wrote {write_card(args.run_dir, args.out, args.card, args.card_limits)}")
    print(f"exported and verified {args.out}: world {table.world}, {len(table.groups)} groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
