"""cress_bitnet.export on synthetic trainer-format checkpoints: packed layout, exact size accounting, loadability."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cress_bitnet  # noqa: F401  (registers the checkpoint allowlist for weights_only loads)
from cress_bitnet.export import ExportError, export_state, main
from cress_bitnet.quantization import quantize_model
from cress_bitnet.quantization.packed import pack_model
from tests.test_packed_layers import TinyModel

REPO = Path(__file__).resolve().parent.parent
TARGETS = "layers.*.fc1,layers.*.fc2"


def _checkpoint(tmp_path, method="svcd", options=None, plan=None, seed=0):
    """A trainer-format dict like fairseq's save_checkpoint writes for quant_transformer, saved to disk."""
    options = options or {}
    torch.manual_seed(seed)
    model = TinyModel()
    names = quantize_model(model, method, TARGETS, **options)
    args = argparse.Namespace(arch="quant_transformer", quant_method=method, quant_targets=TARGETS,
                              quant_modules=json.dumps(names), quant_options=json.dumps(options))
    if plan is not None:
        args.quant_plan = json.dumps(plan)
        # what the lead's model does for a plan: the planned module gets its own options
        for name, bits in plan.items():
            parent, _, child = name.rpartition(".")
            layer = getattr(model.get_submodule(parent), child)
            replacement = type(layer)(layer.in_features, layer.out_features, **{**options, "bits": bits})
            replacement.load_state_dict(layer.state_dict())
            setattr(model.get_submodule(parent), child, replacement)
    state = {
        "args": None,
        "cfg": {"model": args, "common": {"seed": 1}},
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "x", "num_updates": 1}, {"criterion_name": "x", "num_updates": 2}],
        "extra_state": {"epoch": 3},
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(1000)}}},
    }
    path = tmp_path / f"{method}.pt"
    torch.save(state, path)
    return path, model.eval(), names


def _tensor_bytes(state):
    storages = {}
    for t in state["model"].values():
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize(("method", "options", "plan"), [
    ("svcd", {}, None),
    ("bcq", {"bits": 2}, {"layers.0.fc1": 3}),
    ("tsvd", {}, None),
])
def test_export_sizes_equal_tensor_and_file_bytes(tmp_path, capsys, method, options, plan):
    src, trained, names = _checkpoint(tmp_path, method, options, plan)
    dst, report_path = tmp_path / "packed.pt", tmp_path / "sizes.json"
    assert main([str(src), str(dst), "--json", str(report_path)]) == 0
    table = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    out = torch.load(dst, map_location="cpu", weights_only=True)

    assert "last_optimizer_state" not in out and out["optimizer_history"] == [{"criterion_name": "x", "num_updates": 2}]
    assert out["cfg"]["model"].quant_packed is True and out["extra_state"] == {"epoch": 3}
    params = out["model"]
    assert [m["name"] for m in report["modules"]] == names
    for m in report["modules"]:
        own = {k: v for k, v in params.items() if k.startswith(m["name"] + ".")}
        assert "weight" not in {k.rsplit(".", 1)[1] for k in own}
        assert m["packed_bytes"] == sum(v.numel() * v.element_size() for v in own.values())
        assert {v.dtype for v in own.values()} <= {torch.uint8, torch.float16}
        out_f, in_f = map(int, m["shape"].split("x"))
        assert m["fp16_bytes"] == 2 * (out_f * in_f + out_f) and m["fp32_bytes"] == 2 * m["fp16_bytes"]
        assert f"{m['packed_bytes']:,}" in table
    q = report["quantized"]
    assert q["packed_bytes"] == sum(m["packed_bytes"] for m in report["modules"])
    assert q["compression_vs_fp16"] == pytest.approx(q["fp16_bytes"] / q["packed_bytes"])
    assert report["tensor_bytes"] == _tensor_bytes(out) == q["packed_bytes"] + report["rest_tensor_bytes"]
    assert report["file_bytes"] == dst.stat().st_size > report["tensor_bytes"]
    assert f"{report['file_bytes']:,}" in table
    # untouched tensors are bit-identical and still fp32; the tied head still shares the embedding's storage
    original = torch.load(src, weights_only=True)["model"]
    assert torch.equal(params["embed.weight"], original["embed.weight"])
    assert params["embed.weight"].dtype == torch.float32
    assert params["output_projection.weight"].data_ptr() == params["embed.weight"].data_ptr()

    # a freshly built model, packed as a skeleton, loads the exported weights and matches the packed original
    pack_model(trained)
    torch.manual_seed(5)
    fresh = TinyModel()
    quantize_model(fresh, method, TARGETS, **options)
    if plan:
        for name, bits in plan.items():
            parent, _, child = name.rpartition(".")
            layer = getattr(fresh.get_submodule(parent), child)
            setattr(fresh.get_submodule(parent), child,
                    type(layer)(layer.in_features, layer.out_features, **{**options, "bits": bits}))
    pack_model(fresh, skeleton=True)
    fresh.load_state_dict(params, strict=True)
    tokens = torch.randint(0, 11, (2, 7))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(tokens), trained(tokens))


def test_fp16_rest_halves_other_tensors_and_keeps_ties(tmp_path):
    src, _, _ = _checkpoint(tmp_path)
    state = torch.load(src, weights_only=True)
    full, full_report = export_state(state)
    half, half_report = export_state(state, fp16_rest=True)
    assert half_report["rest_tensor_bytes"] * 2 == full_report["rest_tensor_bytes"]
    assert half["model"]["embed.weight"].dtype == torch.float16
    assert half["model"]["output_projection.weight"].data_ptr() == half["model"]["embed.weight"].data_ptr()
    assert half_report["quantized"] == full_report["quantized"]
    assert not hasattr(state["cfg"]["model"], "quant_packed")  # the input dict is left untouched


def test_missing_quant_args_is_a_clear_error(tmp_path, capsys):
    src, _, _ = _checkpoint(tmp_path)
    state = torch.load(src, weights_only=True)
    del state["cfg"]["model"].quant_modules
    with pytest.raises(ExportError, match="quant_modules"):
        export_state(state)
    state["cfg"]["model"].quant_modules = json.dumps(["layers.9.fc1"])
    with pytest.raises(ExportError, match="no layers.9.fc1"):
        export_state(state)
    torch.save(state, tmp_path / "bad.pt")
    assert main([str(tmp_path / "bad.pt"), str(tmp_path / "out.pt")]) == 1
    assert "no layers.9.fc1" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    src, _, _ = _checkpoint(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "cress_bitnet.export", str(src), str(tmp_path / "o.pt")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compression of the quantized layers" in proc.stdout
    assert (tmp_path / "o.pt").is_file()
