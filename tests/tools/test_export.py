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
from cress_bitnet.quantization import QuantRecord, get_method, pack_, quantize_
from cress_bitnet.quantization.surgery import resolve_configs
from tests.quantization.test_packed_layers import TinyModel

REPO = Path(__file__).resolve().parents[2]
TARGETS = "layers.*.fc1,layers.*.fc2"


def _checkpoint(tmp_path, method="svcd", options=None, plan=None, seed=0, legacy=False):
    """A trainer-format dict like fairseq's save_checkpoint writes for quant_transformer, saved to disk.

    ``plan``: per-module bits (mixed precision); ``legacy``: store the cress_bitnet 0.1 quant_* args instead of the
    record."""
    options = options or {}
    torch.manual_seed(seed)
    model = TinyModel()
    config = get_method(method).config.build(**options)
    configs = resolve_configs(model, config, TARGETS)
    for name, bits in (plan or {}).items():
        configs[name] = config.replace(bits=bits)
    names = quantize_(model, configs)
    args = argparse.Namespace(arch="quant_transformer", quant_method=method, quant_targets=TARGETS)
    if legacy:
        args.quant_modules, args.quant_options = json.dumps(names), json.dumps(options)
        args.quant_plan = json.dumps(plan) if plan else None
    else:
        QuantRecord.of_model(model).store(args)
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


@pytest.mark.parametrize(("method", "options", "plan", "legacy"), [
    ("svcd", {}, None, False),
    ("bcq", {"bits": 2}, {"layers.0.fc1": 3}, False),
    ("bcq", {"bits": 2}, {"layers.0.fc1": 3}, True),
    ("tsvd", {}, None, False),
    ("minmax", {"bits": 3}, {"layers.0.fc1": 2, "layers.1.fc2": 5}, False),
])
def test_export_sizes_equal_tensor_and_file_bytes(tmp_path, capsys, method, options, plan, legacy):
    src, trained, names = _checkpoint(tmp_path, method, options, plan, legacy=legacy)
    deploy_bytes = {n: m.deployable_bits() // 8 for n, m in trained.named_modules() if n in names}
    dst, report_path = tmp_path / "packed.pt", tmp_path / "sizes.json"
    assert main([str(src), str(dst), "--json", str(report_path)]) == 0
    table = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    out = torch.load(dst, map_location="cpu", weights_only=True)

    assert "last_optimizer_state" not in out and out["optimizer_history"] == [{"criterion_name": "x", "num_updates": 2}]
    record = QuantRecord.from_args(out["cfg"]["model"])
    assert record.packed and sorted(record.modules) == names and out["extra_state"] == {"epoch": 3}
    assert not hasattr(out["cfg"]["model"], "quant_modules")  # one record, not the 0.1 fields
    for name, bits in (plan or {}).items():
        assert record.modules[name].bits == bits
    params = out["model"]
    assert [m["name"] for m in report["modules"]] == names
    for m in report["modules"]:
        own = {k: v for k, v in params.items() if k.startswith(m["name"] + ".")}
        assert "weight" not in {k.rsplit(".", 1)[1] for k in own}
        assert m["packed_bytes"] == sum(v.numel() * v.element_size() for v in own.values())
        assert m["packed_bytes"] == deploy_bytes[m["name"]]  # the planner's size is the exported size
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
    pack_(trained)
    torch.manual_seed(5)
    fresh = TinyModel()
    assert record.apply(fresh) == names
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
    assert not QuantRecord.from_args(state["cfg"]["model"]).packed  # the input dict is left untouched


def test_missing_quant_args_is_a_clear_error(tmp_path, capsys):
    src, _, _ = _checkpoint(tmp_path)
    state = torch.load(src, weights_only=True)
    record = QuantRecord.from_args(state["cfg"]["model"])
    del state["cfg"]["model"].quant_record
    with pytest.raises(ExportError, match="no quantization record"):
        export_state(state)
    QuantRecord({"layers.9.fc1": record.modules["layers.0.fc1"]}).store(state["cfg"]["model"])
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


def test_packed_state_with_a_wrong_shape_or_nan_is_rejected(tmp_path):
    from cress_bitnet.quantization.base import check_finite_quantizers

    src, _, names = _checkpoint(tmp_path)
    out, _ = export_state(torch.load(src, weights_only=True))
    record = QuantRecord.from_args(out["cfg"]["model"])
    params = dict(out["model"])
    params["layers.0.fc1.signs"] = params["layers.0.fc1.signs"][:, :-1]
    fresh = TinyModel()
    record.apply(fresh)
    with pytest.raises(RuntimeError, match=r"size mismatch for layers\.0\.fc1\.signs"):
        fresh.load_state_dict(params)
    params = dict(out["model"])
    params["layers.1.fc2.h"] = params["layers.1.fc2.h"].clone()
    params["layers.1.fc2.h"][3] = float("nan")
    fresh.load_state_dict(params)
    with pytest.raises(ValueError, match=r"layers\.1\.fc2\.h holds 1 non-finite value"):
        check_finite_quantizers(fresh)
