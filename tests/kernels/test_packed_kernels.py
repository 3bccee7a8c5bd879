"""Packed ±1 / ternary matmuls and the fused packed-layer forwards on every kernel path, against float64 references.

Tolerances: any order of summing n fp32 terms is within (n - 1)·u·Σ|terms| of the exact sum (u = 2^-24; Higham,
Accuracy and Stability of Numerical Algorithms, §4.2). The lookup-table kernel sums K signed inputs per output (the
tables only regroup them); the row-major kernel forms 2·Σ_{bit=1} x − Σ x, two such sums with the first doubled, plus
two roundings; the float64 reference is rounded once to fp32. Hence ``sum_bound`` = (3K + 2)·u·Σ|x|: proof-backed,
and far below what a wrong sign or a dropped term of any size above it produces.
"""

import gc

import pytest
import torch
import torch.nn.functional as F

from cress_bitnet import kernels
from cress_bitnet.quantization import pack_signs, pack_ternary
from cress_bitnet.quantization.common import fake_quant_per_token, row_group_ids

SHAPES = [(1, 13), (7, 65), (33, 200), (50, 769), (17, 3)]  # out x in: odd, below/above one 16-row block, K tails
ROWS = [1, 3, 5, 8, 17, 40, 64, 700]  # 700: more rows than one chunk of the LUT kernel's tables (row_chunk)
U = 2.0**-24


def _dense_pm1(out, inp, gen):
    return torch.where(torch.rand(out, inp, generator=gen) < 0.5, -1.0, 1.0)


def sum_bound(x: torch.Tensor, scale: float = 1.0) -> float:
    """Worst-case fp32 rounding of a sum of the K entries of any row of x (times |weights| <= scale)."""
    return (3 * x.shape[-1] + 2) * U * float(x.abs().sum(-1).max()) * scale


def test_kernel_builds_here():
    # The README promises the kernel builds from pip deps + a system C++ compiler; a silent fallback would hide that.
    assert kernels.kernel_available()
    assert kernels.kernel_isa() in ("avx512", "avx2", "scalar")


@pytest.mark.parametrize("ternary", [False, True], ids=["signs", "ternary"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("rows", ROWS)
def test_matmul_matches_dense(kernel_path, ternary, shape, rows):
    out, inp = shape
    gen = torch.Generator().manual_seed(inp * 1000 + out * 10 + rows + ternary)
    if ternary:
        w = torch.randint(-1, 2, (out, inp), generator=gen).float()
        y = kernels.ternary_matmul(x := torch.randn(rows, inp, generator=gen), pack_ternary(w), inp)
    else:
        w = _dense_pm1(out, inp, gen)
        y = kernels.signed_matmul(x := torch.randn(rows, inp, generator=gen), pack_signs(w), inp)
    ref = (x.double() @ w.double().T).float()
    assert y.shape == (rows, out) and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=0, atol=sum_bound(x))


def test_leading_dims_dtype_and_strided_views(kernel_path):
    gen = torch.Generator().manual_seed(3)
    w = _dense_pm1(24, 96, gen)
    packed = pack_signs(w)
    x = torch.randn(2, 5, 96, generator=gen)
    y = kernels.signed_matmul(x, packed, 96)
    assert y.shape == (2, 5, 24)
    torch.testing.assert_close(y, x @ w.T, rtol=1e-5, atol=1e-4)
    # bf16 input: result comes back in bf16 (the kernel accumulates in fp32)
    yb = kernels.signed_matmul(x.bfloat16(), packed, 96)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), x.bfloat16().float() @ w.T, rtol=2e-2, atol=0.1)
    # column slices of x and of the packed rows (how grouped BCQ calls it): byte-aligned, row-strided
    ys = kernels.signed_matmul(x[..., 32:64], packed[:, 4:8], 32)
    torch.testing.assert_close(ys, x[..., 32:64] @ w[:, 32:64].T, rtol=1e-5, atol=1e-4)


def test_prepack_layout():
    ext = kernels.load_kernel()
    packed = torch.randint(0, 256, (37, 5), dtype=torch.uint8)
    pre = ext.prepack(packed)
    assert pre.shape == (3, 5, 16)
    for o in (0, 15, 16, 36):
        assert torch.equal(pre[o // 16, :, o % 16], packed[o])
    assert not pre[2, :, 5:].any()  # rows past O are zero


@pytest.mark.skipif(not kernels.kernel_available() or not kernels.load_kernel().lut_supported(), reason="no LUT")
def test_prepack_cache_follows_in_place_updates_and_frees():
    gen = torch.Generator().manual_seed(5)
    w = _dense_pm1(40, 72, gen)
    x = torch.randn(4, 72, generator=gen)
    packed = pack_signs(w)
    torch.testing.assert_close(kernels.signed_matmul(x, packed, 72), x @ w.T, rtol=0, atol=sum_bound(x))
    packed.copy_(pack_signs(-w))  # what load_state_dict does to a buffer: the cached layout must not survive it
    torch.testing.assert_close(kernels.signed_matmul(x, packed, 72), -(x @ w.T), rtol=0, atol=sum_bound(x))
    n = len(kernels._prepack_cache)
    del packed
    gc.collect()
    assert len(kernels._prepack_cache) < n
    with torch.inference_mode():  # inference tensors keep no version counter: never cached, still right
        frozen = pack_signs(w)
        torch.testing.assert_close(kernels.signed_matmul(x, frozen, 72), x @ w.T, rtol=0, atol=sum_bound(x))


@pytest.mark.parametrize("per_token", [False, True], ids=["no-act-quant", "per-token"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("rows", [1, 5, 40, 700])
@pytest.mark.parametrize("aux", ["fp32", "fp16", "strided"])
def test_svcd_forward_matches_torch_ops(kernel_path, per_token, bias, rows, aux):
    """``aux``: the vectors in fp32, in fp16 as a packed layer stores them (converted inside the kernel), or as
    strided fp32 views with x a strided view too (the kernel's conversion path)."""
    gen = torch.Generator().manual_seed(rows * 4 + 2 * bias + per_token)
    out, inp = 45, 100
    signs = _dense_pm1(out, inp, gen)
    ln_w, ln_b = torch.randn(inp, generator=gen), torch.randn(inp, generator=gen)
    b = torch.randn(out, generator=gen) if bias else None
    h = torch.rand(out, generator=gen) + 0.5
    x = torch.randn(rows, inp, generator=gen)
    if aux == "fp16":
        ln_w, ln_b, h = ln_w.half(), ln_b.half(), h.half()
        b = None if b is None else b.half()
    elif aux == "strided":
        ln_w, ln_b, h = (torch.stack([v, -v], -1)[:, 0] for v in (ln_w, ln_b, h))
        b = None if b is None else torch.stack([b, -b], -1)[:, 0]
        x = torch.stack([x, -x], -1)[..., 0]
        assert not x.is_contiguous() and not ln_w.is_contiguous()
    y = kernels.svcd_forward(x, ln_w, ln_b, 1e-5, pack_signs(signs), b, h, per_token, 1e-5)
    if kernel_path == "fallback":
        assert y is None  # the caller runs its torch ops
        return
    ln_w, ln_b, h = ln_w.float(), ln_b.float(), h.float()
    b = None if b is None else b.float()
    u = F.layer_norm(x, (inp,), ln_w, ln_b, 1e-5)
    z = (u.double() @ signs.double().T).float() + (0 if b is None else b)
    atol = sum_bound(u)
    if per_token:
        step = z.abs().amax(-1, keepdim=True) / 127  # a sum at a rounding boundary may land one level away
        z = fake_quant_per_token(z)
        atol = atol + float(step.max())
    torch.testing.assert_close(y, z * h, rtol=0, atol=atol * float(h.max()))


@pytest.mark.parametrize("ternary", [False, True], ids=["b1-signs", "b158-ternary"])
@pytest.mark.parametrize("act_bits", [0, 8, 4])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("rows", [1, 8, 17])
def test_normquant_forward_matches_torch_ops(kernel_path, ternary, act_bits, groups, rows):
    gen = torch.Generator().manual_seed(rows * 100 + groups * 10 + act_bits + ternary)
    out, inp = 50, 77
    x = torch.randn(rows, inp, generator=gen) * 3 + 1
    scales = torch.rand(groups, generator=gen) + 0.1
    bias = torch.randn(out, generator=gen) if groups == 3 else None
    if ternary:
        w = torch.randint(-1, 2, (out, inp), generator=gen).float()
        packed = pack_ternary(w)
    else:
        w = _dense_pm1(out, inp, gen)
        packed = pack_signs(w)
    y = kernels.normquant_forward(x, ternary, 1e-5, act_bits, 1e-5, packed, ternary, scales, bias)
    if kernel_path == "fallback":
        assert y is None
        return
    xn = F.rms_norm(x, (inp,), eps=1e-5) if ternary else F.layer_norm(x, (inp,), eps=1e-5)
    if act_bits:
        xn = fake_quant_per_token(xn, act_bits)
    s = scales[row_group_ids(out, groups)]
    ref = (xn.double() @ w.double().T * s.double()).float() + (0 if bias is None else bias)
    torch.testing.assert_close(y, ref, rtol=0, atol=sum_bound(xn, float(scales.max())) + 1e-6)


def test_autograd_input_uses_differentiable_path():
    w = _dense_pm1(5, 19, torch.Generator().manual_seed(0))
    x = torch.randn(3, 19, requires_grad=True)
    kernels.signed_matmul(x, pack_signs(w), 19).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(3, 19))


def test_shape_errors():
    packed = pack_signs(torch.randn(4, 16))
    with pytest.raises(ValueError, match="expected in_features=16"):
        kernels.signed_matmul(torch.randn(2, 15), packed, 16)
    with pytest.raises(ValueError, match="does not hold rows"):
        kernels.signed_matmul(torch.randn(2, 24), packed, 24)


def test_failed_build_falls_back_and_logs_once(monkeypatch, caplog):
    monkeypatch.setenv(kernels.ARCH_ENV, "no-such-cpu-arch")
    kernels._build.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="cress_bitnet.kernels"):
            w = _dense_pm1(3, 10, torch.Generator().manual_seed(1))
            x = torch.randn(2, 10)
            for _ in range(3):
                torch.testing.assert_close(kernels.signed_matmul(x, pack_signs(w), 10), x @ w.T)
        assert not kernels.kernel_available()
        assert sum("torch fallback" in r.getMessage() for r in caplog.records) == 1
    finally:
        monkeypatch.delenv(kernels.ARCH_ENV)
        kernels._build.cache_clear()


def _packed_svcd(seed: int, out: int = 40, inp: int = 72):
    from cress_bitnet.quantization.methods.svcd import PackedSVCDLinear, SVCDLinear

    torch.manual_seed(seed)
    return PackedSVCDLinear.from_quantized(SVCDLinear.from_linear(torch.nn.Linear(inp, out))).eval()


@torch.no_grad()
def test_layer_layout_follows_its_buffers(kernel_path):
    """A packed layer's own prepacked layout must never outlive the weights it was made from: not a load_state_dict
    (in place), not a buffer replaced by another tensor; a deep copy remakes its own."""
    import copy

    a, b = _packed_svcd(0), _packed_svcd(1)
    x = torch.randn(5, 72, generator=torch.Generator().manual_seed(2))
    ya, yb = a(x), b(x)
    assert not torch.allclose(ya, yb)
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(x), yb)
    c = copy.deepcopy(a)
    assert c.layout is not a.layout and torch.equal(c(x), yb)
    a.signs = _packed_svcd(0).signs.clone()  # a new tensor in place of the buffer (as .to() or assignment does)
    expected = copy.deepcopy(a)
    expected.layout = kernels.PrepackedLayout()
    assert torch.equal(a(x), expected(x)) and not torch.equal(a(x), yb)


def test_a_packed_model_loads_the_kernel_while_it_is_built(monkeypatch):
    """QuantRecord.apply on a packed record builds/loads the kernel (so its cost is not in the first decoding step),
    except when CRESS_BITNET_NO_KERNEL asks for the torch path: then nothing is compiled."""
    from cress_bitnet.quantization import QuantRecord, SVCDConfig

    calls = []
    monkeypatch.setattr(kernels, "_build", lambda arch: calls.append(arch))
    monkeypatch.delenv(kernels.ARCH_ENV, raising=False)
    record = QuantRecord({"0": SVCDConfig()}, packed=True)
    monkeypatch.setenv(kernels.FORCE_FALLBACK_ENV, "1")
    record.apply(torch.nn.Sequential(torch.nn.Linear(8, 8)))
    assert calls == []
    monkeypatch.delenv(kernels.FORCE_FALLBACK_ENV)
    record.apply(torch.nn.Sequential(torch.nn.Linear(8, 8)))
    assert calls == ["native"]
