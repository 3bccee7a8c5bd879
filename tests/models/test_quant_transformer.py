"""Issue 4: quant_transformer — 1-bit fine-tuning of a trained FP speech-translation model in fairseq."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO, ToyData, fairseq, generate_args, output, quant_train_args
from fairseq import options, tasks

import cress_bitnet  # noqa: F401
from cress_bitnet.quantization import METHODS as REGISTRY
from cress_bitnet.quantization import QuantLinear, QuantRecord
from cress_bitnet.quantization.planner import select_bits
from cress_bitnet.quantization.surgery import pack_

METHODS = sorted(REGISTRY)
DECODER_LINEARS = re.compile(r"^decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q|k|v|out)_proj$|"
                             r"^decoder\.layers\.\d+\.fc[12]$")


def build(toy: ToyData, fp: Path, *extra: str):  # noqa: ANN201
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(toy.st_dir), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--st-training", "--arch", "quant_transformer", "--pretrained-st-checkpoint", str(fp),
        "--max-tokens", "400000", "--criterion", "speech_and_text_translation", *extra,
    ])
    task = tasks.setup_task(args)
    return task, task.build_model(args), args


def batch(task, n: int = 3) -> dict:  # noqa: ANN001
    task.load_dataset("dev")
    ds = task.dataset("dev")
    return ds.collater([ds[i] for i in range(n)])


def fp_state(fp: Path) -> dict[str, torch.Tensor]:
    return torch.load(fp, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_decodes_without_the_fp_checkpoint(
        method: str, toy: ToyData, fp_checkpoint: Path, tmp_path: Path) -> None:
    fp = tmp_path / "fp.pt"
    shutil.copy(fp_checkpoint, fp)
    save = tmp_path / "q"
    args = quant_train_args(toy, fp, save, "--quant-method", method, "--quant-targets", "decoder",
                            "--disable-validation")
    log = output(fairseq("train", [*args, "--max-update", "2"]))
    assert re.search(rf"\d+ modules swapped for {method}", log)
    fp.unlink()  # neither the resume nor decoding may need the FP checkpoint
    if method == "svcd":  # one resume here; a minmax run with a budget plan resumes after SIGKILL in test_scale_out
        resumed = output(fairseq("train", [*args, "--max-update", "3"]))
        assert "rebuilding the quantized model recorded in the checkpoint being resumed" in resumed
        assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 2 updates\)", resumed)
        assert "num_updates: 3 >= max_update: 3" in resumed
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    record = QuantRecord.from_args(state["cfg"]["model"])
    assert record.methods() == [method] and not record.packed and len(record.modules) == 20
    gen = output(fairseq("generate", generate_args(toy, save / "checkpoint_last.pt")))
    assert re.search(r"Generate tst-COMMON with beam=2: BLEU = \d+\.\d+", gen)


@pytest.mark.parametrize(("preset", "expected"), [
    ("cross_attn", re.compile(r"^decoder\.layers\.\d+\.encoder_attn\.(q|k|v|out)_proj$")),
    ("cross_attn.v", re.compile(r"^decoder\.layers\.\d+\.encoder_attn\.v_proj$")),
    ("self_attn", re.compile(r"^decoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj$")),
    ("decoder", DECODER_LINEARS),
])
def test_g_and_h_exactly_for_the_targeted_modules(preset: str, expected: re.Pattern, toy: ToyData,
                                                  fp_checkpoint: Path) -> None:
    _, model, _ = build(toy, fp_checkpoint, "--quant-targets", preset)
    keys = model.state_dict().keys()
    with_g = {k[: -len(".g")] for k in keys if k.endswith(".g")}
    with_h = {k[: -len(".h")] for k in keys if k.endswith(".h")}
    all_linears = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, QuantLinear))}
    want = {n for n in all_linears if expected.match(n)}
    assert want and with_g == want and with_h == want
    assert "decoder.layers.0.encoder_attn.v_proj.g" in keys or preset not in ("cross_attn", "decoder")
    assert not any(k.startswith("decoder.output_projection.") and k.endswith((".g", ".h")) for k in keys)


def test_swap_keeps_the_fp_weights(toy: ToyData, fp_checkpoint: Path) -> None:
    _, model, _ = build(toy, fp_checkpoint, "--quant-targets", "decoder")
    fp = fp_state(fp_checkpoint)
    state = model.state_dict()
    for key, value in fp.items():
        assert torch.equal(state[key], value), key  # latent weights of swapped layers included
    assert set(state) - set(fp) == {k for k in state if re.search(r"\.(g|h|norm\.weight|norm\.bias)$", k)}


def _decode_both_ways(model, sample) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    net_input = sample["net_input"]
    encoder_out = model.encoder(net_input["src_tokens"], net_input["src_lengths"], net_input["mode"])
    prev = net_input["prev_output_tokens"]
    forced, _ = model.decoder(prev, encoder_out=encoder_out)
    state: dict = {}
    steps = [model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)[0]
             for t in range(prev.size(1))]
    return forced, torch.cat(steps, dim=1)


@pytest.mark.parametrize("method", METHODS)
def test_teacher_forced_equals_incremental(method: str, toy: ToyData, fp_checkpoint: Path) -> None:
    extra = ["--quant-act", "per_token"] if method in ("svcd", "bitnet", "bitnet158") else []
    task, model, _ = build(toy, fp_checkpoint, "--quant-method", method, "--quant-targets", "decoder", *extra)
    model = model.double().eval()
    sample = batch(task)
    sample["net_input"]["src_tokens"] = sample["net_input"]["src_tokens"].double()
    with torch.no_grad():
        forced, incremental = _decode_both_ways(model, sample)
    mask = sample["target"].ne(task.target_dictionary.pad())
    torch.testing.assert_close(forced[mask], incremental[mask], rtol=1e-6, atol=1e-6)


def _tf_loss(model, sample) -> torch.Tensor:  # noqa: ANN001
    net_output = model(**sample["net_input"])
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    return torch.nn.functional.nll_loss(lprobs.transpose(1, 2), sample["target"], ignore_index=1)


def test_swapped_self_attention_is_used_in_training(toy: ToyData, fp_checkpoint: Path) -> None:
    from cress_bitnet.models.st_checkpoint import build_fp_model

    task, model, _ = build(toy, fp_checkpoint, "--quant-targets", "self_attn")
    fp_model, _ = build_fp_model(str(fp_checkpoint), task, flag="--pretrained-st-checkpoint")
    sample = batch(task)
    model.eval()
    fp_model.eval()
    with torch.no_grad():
        assert all(layer.self_attn.skip_embed_dim_check for layer in model.decoder.layers)
        quantized = _tf_loss(model, sample)
        reference = _tf_loss(fp_model, sample)
        for layer in model.decoder.layers:  # fairseq's fast path: raw latent weights, swapped modules bypassed
            layer.self_attn.skip_embed_dim_check = False
        bypassed = _tf_loss(model, sample)
    assert not torch.allclose(quantized, reference)
    torch.testing.assert_close(bypassed, reference)  # what a naive swap would silently train


def test_distillation_gradient_frozen_teacher_not_saved(toy: ToyData, fp_checkpoint: Path, tmp_path: Path) -> None:
    """KD is the criterion's (--kd-weight; teacher default --pretrained-st-checkpoint); its math is pinned in
    test_criterion_kd.py, here on a real quant_transformer: gradient into g/h, frozen teacher, nothing saved."""
    task, model, args = build(toy, fp_checkpoint, "--quant-targets", "decoder", "--kd-weight", "2.0")
    criterion = task.build_criterion(args)
    assert criterion.kd_weight == 2.0 and criterion.kd_teacher_path == str(fp_checkpoint)
    keys_before = set(model.state_dict())
    params_before = {id(p) for p in model.parameters()}
    sample = batch(task)
    model.train()
    net_output = model(**sample["net_input"])
    kd = criterion.kd_loss(model, sample["net_input"], net_output, sample)
    assert kd.requires_grad and kd.item() > 0
    teacher = criterion.teacher(next(model.parameters()))
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert not ({id(p) for p in teacher.parameters()} & params_before)
    assert list(criterion.parameters()) == [] and not criterion.state_dict()
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    kd.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.endswith(".h") and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.step()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert set(model.state_dict()) == keys_before
    # the criterion adds it in fairseq-train, and a trained checkpoint has no teacher tensors
    save = tmp_path / "kd"
    log = output(fairseq("train", quant_train_args(toy, fp_checkpoint, save, "--quant-targets", "decoder",
                                                   "--kd-weight", "1.0", "--max-update", "2",
                                                   "--disable-validation")))
    assert re.search(r"kd_loss=\d", log)
    saved = torch.load(save / "checkpoint_last.pt", weights_only=True)["model"]
    assert set(saved) == keys_before


def test_budget_planner_meets_budget_with_uniform_bits(toy: ToyData, fp_checkpoint: Path) -> None:
    _, full, _ = build(toy, fp_checkpoint, "--quant-method", "bcq", "--quant-bits", "4", "--quant-targets", "decoder")
    _, low, _ = build(toy, fp_checkpoint, "--quant-method", "bcq", "--quant-bits", "1", "--quant-targets", "decoder")

    def size(m: torch.nn.Module) -> int:
        return sum(q.deployable_bits() for q in m.modules() if isinstance(q, QuantLinear))

    budget_bits = (size(full) + size(low)) // 2
    _, model, args = build(toy, fp_checkpoint, "--quant-method", "bcq", "--quant-targets", "decoder",
                           "--quant-budget-mb", str(budget_bits / 8 / 2**20), "--quant-calib-samples", "4")
    bits = {n: m.bits for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert size(model) <= budget_bits
    assert max(bits.values()) - min(bits.values()) <= 1 and len(set(bits.values())) == 2
    record = QuantRecord.from_args(args)  # stored in the args, hence in every checkpoint
    assert {n: c.bits for n, c in record.modules.items()} == bits


def test_nan_in_a_quantizer_is_an_error_when_loaded(toy: ToyData, fp_checkpoint: Path) -> None:
    _, model, _ = build(toy, fp_checkpoint, "--quant-targets", "cross_attn")
    state = model.state_dict()
    state["decoder.layers.1.encoder_attn.v_proj.g"][0] = float("inf")
    with pytest.raises(ValueError, match=r"decoder\.layers\.1\.encoder_attn\.v_proj\.g holds 1 non-finite"):
        model.load_state_dict(state)


def test_select_bits_order_uniformity_and_errors() -> None:
    sizes = {n: {b: b * 100 for b in range(1, 5)} for n in "abc"}
    medians = {"a": 3.0, "b": 2.0, "c": 1.0}
    assert select_bits(sizes, medians, 1200, 1, 4) == {"a": 4, "b": 4, "c": 4}
    assert select_bits(sizes, medians, 1000, 1, 4) == {"a": 3, "b": 3, "c": 4}  # largest median gives first
    plan = select_bits(sizes, medians, 500, 1, 4)
    assert sum(sizes[n][plan[n]] for n in plan) <= 500 and max(plan.values()) - min(plan.values()) <= 1
    with pytest.raises(ValueError, match="below the smallest possible size"):
        select_bits(sizes, medians, 299, 1, 4)


def test_quantized_decoder_runs_in_half_precision(toy: ToyData, fp_checkpoint: Path) -> None:
    task, model, _ = build(toy, fp_checkpoint, "--quant-targets", "decoder")
    sample = batch(task)
    model.eval()
    with torch.no_grad():
        net_input = sample["net_input"]
        encoder_out = model.encoder(net_input["src_tokens"], net_input["src_lengths"], "st")
        model.decoder.half()
        encoder_out["encoder_out"] = [encoder_out["encoder_out"][0].half()]
        logits, _ = model.decoder(net_input["prev_output_tokens"], encoder_out=encoder_out)
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()


def test_packed_output_projection_loads_when_the_decoder_shares_its_embedding(toy: ToyData,
                                                                              fp_checkpoint: Path) -> None:
    """A decoder that shares its input and output embedding (hubert_deltalm_base) gets embed_tokens.weight copied
    into output_projection.weight by fairseq's state-dict upgrade: with a packed 1-bit output projection that key
    must not reach the strict load (it failed so at real size: 'Unexpected key(s) ... output_projection.weight')."""
    _, model, _ = build(toy, fp_checkpoint, "--quant-targets", "decoder,output")
    pack_(model)
    state = model.state_dict()
    assert "decoder.output_projection.weight" not in state and "decoder.output_projection.signs" in state
    model.decoder.share_input_output_embed = True
    model.load_state_dict(dict(state))  # strict
    assert torch.equal(model.decoder.output_projection.signs, state["decoder.output_projection.signs"])


def test_bad_quant_flags(toy: ToyData, fp_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset 'crossattn'"):
        build(toy, fp_checkpoint, "--quant-targets", "crossattn")
    with pytest.raises(ValueError, match=r"decoder\.layers\.\*\.nothing"):
        build(toy, fp_checkpoint, "--quant-targets", "decoder.layers.*.nothing")
    with pytest.raises(RuntimeError, match=r"not found: .*missing\.pt \(given by --pretrained-st-checkpoint\)"):
        build(toy, tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match="not a hubert_transformer speech-translation checkpoint"):
        build(toy, toy.mt_checkpoint)
    with pytest.raises(ValueError, match=r"matched no nn\.Linear \(output heads"):
        build(toy, fp_checkpoint, "--quant-targets", "decoder.output_*")  # only output heads: never by wildcard
    for method, bits in (("bcq", "5"), ("minmax", "1"), ("minmax", "17")):
        with pytest.raises(ValueError, match=rf"{method}: bits must be in \["):
            build(toy, fp_checkpoint, "--quant-method", method, "--quant-bits", bits)
    with pytest.raises(ValueError, match="needs a method with a bit width"):
        build(toy, fp_checkpoint, "--quant-method", "svcd", "--quant-budget-mb", "1")
    bad = fairseq("train", quant_train_args(toy, fp_checkpoint, tmp_path, "--quant-method", "bitnet3"), check=False)
    assert bad.returncode != 0 and "argument --quant-method: invalid choice: 'bitnet3'" in bad.stderr
