"""Packed ±1 / ternary matmul: compiled kernel and torch fallback against a dense reference."""

import pytest
import torch

from cress_bitnet import kernels
from cress_bitnet.quantization import pack_signs, pack_ternary

IN = [13, 65, 200, 769]
OUT = [1, 7, 33]
BATCH = [1, 3, 17]


def _dense_pm1(out, inp, gen):
    return torch.where(torch.rand(out, inp, generator=gen) < 0.5, -1.0, 1.0)


def test_kernel_builds_here():
    # The README promises the kernel builds from pip deps + a system C++ compiler; a silent fallback would hide that.
    assert kernels.kernel_available()
    assert kernels.kernel_isa() in ("avx512", "avx2", "scalar")


@pytest.mark.parametrize("inp", IN)
@pytest.mark.parametrize("out", OUT)
@pytest.mark.parametrize("batch", BATCH)
def test_signed_matmul_matches_dense(mode, inp, out, batch):
    gen = torch.Generator().manual_seed(inp * 1000 + out * 10 + batch)
    w = _dense_pm1(out, inp, gen)
    x = torch.randn(batch, inp, generator=gen)
    y = kernels.signed_matmul(x, pack_signs(w), inp)
    ref = (x.double() @ w.double().T).float()
    assert y.shape == (batch, out) and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4 * inp**0.5)


@pytest.mark.parametrize("inp", IN)
@pytest.mark.parametrize("out", OUT)
@pytest.mark.parametrize("batch", BATCH)
def test_ternary_matmul_matches_dense(mode, inp, out, batch):
    gen = torch.Generator().manual_seed(inp * 1000 + out * 10 + batch + 7)
    t = torch.randint(-1, 2, (out, inp), generator=gen).float()
    x = torch.randn(batch, inp, generator=gen)
    y = kernels.ternary_matmul(x, pack_ternary(t), inp)
    torch.testing.assert_close(y, (x.double() @ t.double().T).float(), rtol=1e-5, atol=1e-4 * inp**0.5)


def test_leading_dims_dtype_and_strided_views(mode):
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
