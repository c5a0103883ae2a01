"""ONNX export: graph contract, parity with PyTorch, guarded logits, and symbol-table validation."""

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from export.onnx_export import GraphWrapper, load_run, verify_export  # noqa: E402
from service.inference import Extractor  # noqa: E402
from service.symbols import METADATA_KEY, SymbolTableError  # noqa: E402
from training.worlds import TinyWorld  # noqa: E402


def test_graph_contract(tiny_model):
    model = onnx.load(str(tiny_model))
    onnx.checker.check_model(model, full_check=True)
    (image,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image"
    assert dims == ["batch", 16, 16, 3]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == ["winners", "confidences", "top_indices", "top_probs"]
    table = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert table["world"] == "tiny"
    assert table["top_k"] == 3
    assert table["format_version"] == 1
    assert table["input"] == {"height": 16, "width": 16, "channels": 3, "layout": "NHWC", "dtype": "uint8"}
    assert table["metrics"]["min_decode_accuracy"] == 1.0


def test_dynamic_batch_and_decode(tiny_model):
    extractor = Extractor.load(tiny_model, provider="cpu")
    images, labels = TinyWorld().sample(37, np.random.default_rng(11))
    outputs = extractor.run(images)
    assert outputs["winners"].shape == (37, 2)
    assert outputs["winners"].dtype == np.int64
    assert outputs["top_probs"].shape == (37, 2, 3)
    colours = TinyWorld().factors[0].values
    for extraction, label in zip(extractor.extract(list(images)), labels):
        (obj,) = extraction.objects
        assert obj.attributes["colour"].value == colours[label[0]]
        assert obj.attributes["x"].value // 4 == label[1]
        assert obj.attributes["colour"].candidates[0].value == obj.attributes["colour"].value


def test_verification_passes_and_detects_a_mismatch(tiny_run, tiny_model):
    net, _, config = load_run(tiny_run[0])
    report = verify_export(GraphWrapper(net, 3).eval(), tiny_model, config.world, images=200)
    assert report["max_confidence_difference"] < 1e-4
    # A network that differs from the file must fail verification.
    with torch.no_grad():
        net.readout.weight.zero_()
        for name, parameter in net.named_parameters():
            if name.startswith("attend") or name.startswith("kernels"):
                parameter.mul_(-1.0)
    with pytest.raises(Exception, match="verification failed"):
        verify_export(GraphWrapper(net, 3).eval(), tiny_model, config.world, images=200)


def test_non_finite_logits_yield_valid_winners(tiny_run, tmp_path):
    net, table, _ = load_run(tiny_run[0])
    with torch.no_grad():
        net.kernel_bias["x"].fill_(float("nan"))
        net.norm.running_mean[:3] = float("inf")
    path = tmp_path / "nan.onnx"
    wrapper = GraphWrapper(net, 2).eval()
    torch.onnx.export(
        wrapper, (torch.zeros(1, 16, 16, 3, dtype=torch.uint8),), str(path),
        input_names=["image"], output_names=["winners", "confidences", "top_indices", "top_probs"],
        dynamic_axes={"image": {0: "batch"}}, opset_version=18, dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images, _ = TinyWorld().sample(8, np.random.default_rng(0))
    winners = session.run(None, {"image": images})[0]
    assert (winners[:, 0] >= 0).all()
    assert (winners[:, 0] < 3).all()
    assert (winners[:, 1] >= 0).all()
    assert (winners[:, 1] < 4).all()


def _rewrite_metadata(source, target, value):
    model = onnx.load(str(source))
    other_props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for prop in other_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    if value is not None:
        model.metadata_props.add(key=METADATA_KEY, value=value)
    onnx.save(model, str(target))
    return target


def test_missing_symbol_table_is_rejected(tiny_model, tmp_path):
    path = _rewrite_metadata(tiny_model, tmp_path / "bare.onnx", None)
    with pytest.raises(SymbolTableError, match=r"bare.onnx: missing symbol table \(metadata key 'wtabridge.symbols'\)"):
        Extractor.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: "{not json", "not valid JSON"),
        (lambda t: json.dumps({**t, "format_version": 99}), "field 'format_version' is 99"),
        (lambda t: json.dumps({k: v for k, v in t.items() if k != "groups"}), "field 'groups': Field required"),
        (lambda t: json.dumps({**t, "input": {**t["input"], "height": -1}}), "field 'input.height'"),
        (lambda t: json.dumps({**t, "groups": t["groups"][:1]}), "field 'groups' lists 1 groups but the graph has 2"),
        (lambda t: json.dumps({**t, "input": {**t["input"], "width": 32}}), "field 'input' is 16 x 32"),
    ],
)
def test_malformed_symbol_table_names_field(tiny_model, tmp_path, edit, message):
    table = json.loads({p.key: p.value for p in onnx.load(str(tiny_model)).metadata_props}[METADATA_KEY])
    path = _rewrite_metadata(tiny_model, tmp_path / "bad.onnx", edit(table))
    with pytest.raises(SymbolTableError, match=message) as caught:
        Extractor.load(path)
    assert "bad.onnx" in str(caught.value)


def test_cli_reports_missing_run(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "export", str(tmp_path), "--out", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {tmp_path}: missing checkpoint.pt")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.onnx").exists()
