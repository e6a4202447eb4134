"""FLOPs of grouped-query SDPA on every torch the suite supports (issue 23): the suite's own
formula where torch's refuses fewer key/value heads (2.11 and older), equal to torch's where
torch has one (2.12 on)."""

from __future__ import annotations

import itertools

import pytest
from torch.utils import flop_counter

from ac_bench.probes import flops

SHAPES = [((b, hq, s, d), (b, hkv, sk, d), (b, hkv, sk, dv)) for b, (hq, hkv), s, sk, d, dv in itertools.product(
    (1, 3), ((4, 4), (4, 2), (32, 8), (8, 1)), (16, 40), (16, 24), (8, 64), (8, 32))]


def _old_sdpa_flop_count(query_shape, key_shape, value_shape):
    """torch 2.11's formula, which asserts equal head counts."""
    b, h, s_q, d_q = query_shape
    _b2, _h2, s_k, _d2 = key_shape
    _b3, _h3, _s3, d_v = value_shape
    assert b == _b2 == _b3 and h == _h2 == _h3 and d_q == _d2 and s_k == _s3 and d_q == _d2, (
        "sdpa_flop_count: query/key/value shapes are incompatible")
    return 2 * b * h * s_q * d_q * s_k + 2 * b * h * s_q * s_k * d_v


@pytest.mark.parametrize("q,k,v", SHAPES)
def test_own_formula_equals_torchs_where_torch_has_one(q, k, v):
    if flop_counter.sdpa_flop_count is flops.gqa_sdpa_flop_count:
        pytest.skip("this torch's formula refuses grouped-query shapes: the suite's own is in its place")
    assert flops.gqa_sdpa_flop_count(q, k, v) == flop_counter.sdpa_flop_count(q, k, v), (q, k, v)
    grad = (q[0], q[1], q[2], v[3])
    assert flops.gqa_sdpa_backward_flop_count(grad, q, k, v) == flop_counter.sdpa_backward_flop_count(grad, q, k, v), (q, k, v)


def test_an_old_torch_gets_the_suites_formula(monkeypatch):
    """With torch 2.11's formula in place, the suite supplies its own, and FlopCounterMode's
    registered SDPA formulas then count grouped-query attention."""
    monkeypatch.setattr(flop_counter, "sdpa_flop_count", _old_sdpa_flop_count)
    monkeypatch.setattr(flop_counter, "sdpa_backward_flop_count", lambda *shapes: _old_sdpa_flop_count(*shapes[1:]) * 2)
    assert flops.supply_gqa_formulas() is True
    q, k, v = (1, 32, 128, 128), (1, 8, 128, 128), (1, 8, 128, 128)
    assert flop_counter.sdpa_flop(q, k, v) == 4 * 32 * 128 * 128 * 128
    grad = (1, 32, 128, 128)
    assert flop_counter.sdpa_backward_flop(grad, q, k, v) == 10 * 32 * 128 * 128 * 128
    assert flops.supply_gqa_formulas() is False  # already in place: nothing to do


def test_shapes_that_are_not_sdpa_are_refused():
    with pytest.raises(ValueError, match="incompatible"):
        flops.gqa_sdpa_flop_count((1, 4, 8, 16), (1, 3, 8, 16), (1, 3, 8, 16))
