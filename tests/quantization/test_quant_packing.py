"""Bit packing: exact round trips, layout conventions, shapes, errors."""

import math

import pytest
import torch

from cress_bitnet.quantization import pack_signs, pack_ternary, packed_bits, unpack_signs, unpack_ternary

SHAPES = [(3, 1), (5, 7), (2, 3, 13), (1, 64), (4, 65)]


@pytest.mark.parametrize("shape", SHAPES)
def test_sign_round_trip(shape):
    torch.manual_seed(0)
    t = torch.randn(shape)
    t.view(-1)[0] = 0.0  # zero packs as +1
    packed = pack_signs(t)
    assert packed.dtype == torch.uint8
    assert packed.shape == (*shape[:-1], math.ceil(shape[-1] / 8))
    out = unpack_signs(packed, shape[-1], dtype=torch.float16)
    assert out.dtype == torch.float16
    assert torch.equal(out.float(), torch.where(t >= 0, 1.0, -1.0))


@pytest.mark.parametrize("shape", SHAPES)
def test_ternary_round_trip(shape):
    torch.manual_seed(1)
    t = torch.randint(-1, 2, shape).float()
    packed = pack_ternary(t)
    assert packed.dtype == torch.uint8
    assert packed.shape == (*shape[:-1], math.ceil(shape[-1] / 4))
    assert torch.equal(unpack_ternary(packed, shape[-1]), t)


def test_sign_layout_little_endian():
    # elements 0 and 9 positive -> bit 0 of byte 0 and bit 1 of byte 1
    t = -torch.ones(1, 10)
    t[0, 0] = 1.0
    t[0, 9] = 1.0
    assert pack_signs(t).tolist() == [[1, 2]]


def test_ternary_codes():
    # codes 0 -> 0, 1 -> +1, 2 -> -1, value j at bits 2j
    t = torch.tensor([[1.0, -1.0, 0.0, 1.0, -1.0]])
    assert pack_ternary(t).tolist() == [[1 | (2 << 2) | (0 << 4) | (1 << 6), 2]]


def test_unpack_rejects_bad_inputs():
    packed = pack_signs(torch.ones(2, 9))
    with pytest.raises(ValueError):
        unpack_signs(packed, 17)
    with pytest.raises(ValueError):
        unpack_signs(packed, 8)
    with pytest.raises(TypeError):
        unpack_signs(packed.to(torch.int32), 9)
    with pytest.raises(ValueError):
        pack_ternary(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError):
        unpack_ternary(torch.tensor([[3]], dtype=torch.uint8), 1)


def test_packed_bits_pads_each_row():
    assert packed_bits(3, 13, 1) == 3 * 2 * 8
    assert packed_bits(3, 13, 2) == 3 * 4 * 8
    assert packed_bits(2, 5, 8) == 2 * 5 * 8
    assert packed_bits(4, 65, 1) == pack_signs(torch.zeros(4, 65)).numel() * 8
