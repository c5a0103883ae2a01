"""End-to-end training on the tiny world: the CLI, its outputs, and a code that decodes exactly."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")


def test_tiny_world_decodes_exactly(tiny_run):
    out, summary = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["wta"]["decode_accuracy"] == {"colour": 1.0, "x": 1.0}
    assert metrics["wta"]["single_valued_share"] == 1.0
    assert metrics["wta"]["dead_units"] == 0
    assert summary["min_decode_accuracy"] == 1.0


def test_run_directory_contents(tiny_run):
    out, _ = tiny_run
    for name in ("checkpoint.pt", "symbols.json", "metrics.json", "auc_heatmap.png", "curves.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 0
    assert metrics["config"]["seed"] == 0
    assert {"hard_task_accuracy", "soft_task_accuracy", "mig", "single_valued_share"} <= set(metrics["wta"])
    assert set(metrics["dense"]["decode_accuracy"]) == {"colour", "x"}
    assert set(metrics["few_shot_task_accuracy"]) == {"wta", "dense"}


def test_symbol_table_names_every_unit(tiny_run):
    from service.symbols import parse_symbol_table

    out, _ = tiny_run
    table = parse_symbol_table((out / "symbols.json").read_text(), "symbols.json")
    colour = next(g for g in table.groups if g.factor == "colour")
    assert sorted(u.value for u in colour.units) == ["blue", "green", "red"]
    x = next(g for g in table.groups if g.factor == "x")
    assert sorted(u.pixel for u in x.units) == [1.5, 5.5, 9.5, 13.5]


def test_cli_rejects_unknown_world(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "training", "--world", "nowhere", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown world 'nowhere': use 'sprites', 'sortofclevr', 'tiny' or a labelled folder path"
