"""Quantizer building blocks: bit slicing, LSQ pieces, and the fused ADC against a plain-ops reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cimexp.cim.quant as quant
from cimexp.cim.mapping import ArrayMapping, slice_bits
from cimexp.cim.options import WeightEncoding
from cimexp.cim.quant import adc_shift_add, lsq_init, quantize_int, round_ste, set_kernels


def _mapping(w_bits: int, cell_bits: int, encoding: WeightEncoding) -> ArrayMapping:
    return ArrayMapping.create(
        4,
        4,
        (1, 1),
        array_size=64,
        w_bits=w_bits,
        cell_bits=cell_bits,
        adc_bits=4,
        encoding=encoding,
        signed_inputs=False,
    )


@settings(max_examples=60, deadline=None)
@given(w_bits=st.integers(1, 9), cell_bits=st.integers(1, 4))
def test_twos_complement_slices_recombine_to_every_weight(w_bits, cell_bits):
    if cell_bits > w_bits:
        return
    m = _mapping(w_bits, cell_bits, WeightEncoding.TWOS_COMPLEMENT)
    lo, hi = m.weight_range()
    w = torch.arange(lo, hi + 1, dtype=torch.float64)
    codes = slice_bits(w.expand(1, m.n_splits, -1).clone(), m)  # every copy holds the same weight
    shifts = torch.tensor(m.split_shift(), dtype=torch.float64).reshape(1, -1, 1)
    assert torch.equal((codes * shifts).sum(1)[0], w)
    lower = codes[:, 1:]  # unsigned cells (none when one cell holds the whole weight)
    assert lower.numel() == 0 or (lower.min() >= 0 and lower.max() <= 2**cell_bits - 1)
    msb = codes[:, 0]
    if m.msb_bits == 1:  # the sign bit alone, stored as 0/1 with significance -2^(w_bits-1)
        assert (
            m.sign_bit_msb and set(msb.unique().tolist()) <= {0.0, 1.0} and m.split_shift()[0] == -(2 ** (w_bits - 1))
        )
    else:  # a signed cell of msb_bits bits
        assert msb.min() >= -(2 ** (m.msb_bits - 1)) and msb.max() <= 2 ** (m.msb_bits - 1) - 1


@settings(max_examples=80, deadline=None)
@given(
    w_bits=st.integers(1, 9),
    cell_bits=st.integers(1, 4),
    adc_bits=st.integers(1, 6),
    encoding=st.sampled_from(list(WeightEncoding)),
)
def test_every_adc_range_faces_the_sign_of_its_columns_partial_sums(w_bits, cell_bits, adc_bits, encoding):
    """With non-negative inputs a column whose cell codes are all >= 0 has partial sums >= 0, so its ADC range must
    be unsigned, [0, 2^b - 1]: a signed range would leave half of the codes unused. Before the sign-bit cell,
    4-bit weights on 3-bit (or 1-bit) cells had their MSB column on a signed ADC that never saw a positive value."""
    if cell_bits > w_bits or (encoding is WeightEncoding.DIFFERENTIAL and w_bits < 2):
        return
    m = ArrayMapping.create(
        4, 4, (1, 1), array_size=64, w_bits=w_bits, cell_bits=cell_bits, adc_bits=adc_bits, encoding=encoding,
        signed_inputs=False,
    )  # fmt: skip
    lo, hi = m.weight_range()
    w = torch.arange(0 if encoding is WeightEncoding.DIFFERENTIAL else lo, hi + 1, dtype=torch.float64)
    codes = slice_bits(w.expand(m.n_polarities, m.n_splits, -1).clone(), m)
    adc_min, adc_max = m.adc_range()
    for p in range(m.n_polarities):
        for s in range(m.n_splits):
            assert adc_max[p][s] - adc_min[p][s] == 2**adc_bits - 1  # always 2^b codes
            if codes[p, s].min() >= 0:
                assert adc_min[p][s] == 0, (p, s, codes[p, s].unique().tolist())
            else:  # a signed cell: its partial sums take both signs (a 1-bit ADC then has codes -1, 0)
                assert codes[p, s].max() > 0 and adc_min[p][s] < 0 and (adc_max[p][s] > 0 or adc_bits == 1)


@settings(max_examples=40, deadline=None)
@given(w_bits=st.integers(2, 9), cell_bits=st.integers(1, 4))
def test_differential_magnitudes_fit_unsigned_cells(w_bits, cell_bits):
    if cell_bits > w_bits:
        return
    m = _mapping(w_bits, cell_bits, WeightEncoding.DIFFERENTIAL)
    top = m.weight_range()[1]
    magnitude = torch.arange(0, top + 1, dtype=torch.float64)
    codes = slice_bits(magnitude.expand(2, m.n_splits, -1).clone(), m)
    shifts = torch.tensor(m.split_shift(), dtype=torch.float64).reshape(1, -1, 1)
    assert torch.equal((codes * shifts).sum(1)[0], magnitude)
    assert codes.min() >= 0 and codes.max() <= 2**cell_bits - 1


def test_slice_gradient_is_shared_equally_over_the_splits():
    m = _mapping(6, 2, WeightEncoding.TWOS_COMPLEMENT)
    w = torch.full((1, 3, 5), 13.0, requires_grad=True)
    codes = slice_bits(w, m)
    shifts = torch.tensor(m.split_shift(), dtype=torch.float32).reshape(1, -1, 1)
    (codes * shifts).sum().backward()
    torch.testing.assert_close(w.grad, torch.full_like(w, 1 / 3))


@settings(max_examples=50, deadline=None)
@given(
    step=st.floats(0.01, 10.0),
    qmin=st.integers(-8, 0),
    span=st.integers(1, 15),
    seed=st.integers(0, 1000),
)
def test_quantize_int_stays_in_range_and_rounds_to_nearest(step, qmin, span, seed):
    qmax = qmin + span
    v = torch.randn(64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * step * span
    q = quantize_int(v, torch.tensor(step, dtype=torch.float64), qmin, qmax)
    assert q.min() >= qmin and q.max() <= qmax and torch.equal(q, q.round())
    inside = (v / step >= qmin) & (v / step <= qmax)
    assert ((q - v / step)[inside].abs() <= 0.5 + 1e-12).all()


def test_lsq_init_replaces_dead_entries_with_the_mean_of_live_ones():
    step = lsq_init(torch.tensor([0.0, 1.0, 3.0]), 4.0)
    torch.testing.assert_close(step, torch.tensor([2.0, 1.0, 3.0]))


def _adc_reference(psum, step, factor, qmin, qmax):
    """The fused function's literal twin: LSQ on each column with elementwise ops and STE, then the sum."""
    v = psum / step.unsqueeze(-1)
    code = round_ste(torch.maximum(torch.minimum(v, qmax.unsqueeze(-1)), qmin.unsqueeze(-1)))
    return (code * (step * factor).unsqueeze(-1)).sum(1)


def test_fused_adc_matches_plain_ops_in_value_and_gradient():
    torch.manual_seed(0)
    b, g, o, positions = 3, 6, 5, 7
    psum = (torch.randn(b, g, o, positions, dtype=torch.float64) * 20).requires_grad_(True)
    step = (torch.rand(g, o, dtype=torch.float64) * 4 + 0.5).requires_grad_(True)
    factor = torch.randn(g, o, dtype=torch.float64, requires_grad=True)
    qmin = torch.tensor([[-8.0], [0.0], [-8.0], [0.0], [-2.0], [0.0]], dtype=torch.float64)
    qmax = torch.tensor([[7.0], [15.0], [7.0], [15.0], [1.0], [3.0]], dtype=torch.float64)
    upstream = torch.randn(b, o, positions, dtype=torch.float64)

    fused = adc_shift_add(psum, step, factor, qmin, qmax)
    grads = torch.autograd.grad((fused * upstream).sum(), (psum, step, factor))
    ref = _adc_reference(psum, step, factor, qmin, qmax)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (psum, step, factor))
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _integer_psum_case(seed: int, magnitude: int) -> tuple[torch.Tensor, ...]:
    """Float32 integer partial sums ``[4, 6, 5, 9]`` in ``[-magnitude, magnitude)``, steps of about
    ``magnitude / 10``, factors, a signed 4-bit code range and an upstream gradient."""
    torch.manual_seed(seed)
    psum = torch.randint(-magnitude, magnitude, (4, 6, 5, 9)).float().requires_grad_(True)
    step = ((torch.rand(6, 5) + 0.2) * magnitude / 10).requires_grad_(True)
    factor = torch.randn(6, 5, requires_grad=True)
    return psum, step, factor, torch.full((6, 1), -8.0), torch.full((6, 1), 7.0), torch.randn(4, 5, 9)


@pytest.mark.parametrize("kernels", ["compiled", "eager"])
def test_fused_adc_compiled_and_eager_kernels_agree_in_float32(kernels):
    """Both kernel modes give the same result on the integer partial sums of the paper's setting (float32)."""
    psum, step, factor, qmin, qmax, upstream = _integer_psum_case(seed=1, magnitude=300)
    outs = []
    for mode in (kernels, "eager"):
        previous = set_kernels(mode)
        try:
            y = adc_shift_add(psum, step, factor, qmin, qmax)
            outs.append([y, *torch.autograd.grad((y * upstream).sum(), (psum, step, factor))])
        finally:
            set_kernels(previous)
    for got, want in zip(*outs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_kernels_fall_back_to_eager_with_a_warning_when_compiling_fails(monkeypatch):
    """``auto``: a machine where inductor cannot compile (no C++ compiler, say) still trains, slower, and says so;
    ``compiled`` raises instead. A bad mode names the choices."""

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(quant, "_compiled", {})
    monkeypatch.setattr(quant, "_compile_failed", set())
    monkeypatch.setattr(torch, "compile", broken_compile)
    args = (torch.randn(2, 3, 4, 5), torch.ones(3, 4), torch.ones(3, 4), torch.full((3, 1), -2.0), torch.ones(3, 1))
    previous = set_kernels("compiled")
    try:
        with pytest.raises(RuntimeError, match="no C.. compiler"):
            adc_shift_add(*args)
        set_kernels("auto")
        with pytest.warns(RuntimeWarning, match="adc_forward failed.*no C.. compiler"):
            y = adc_shift_add(*args)
        torch.testing.assert_close(y, quant.adc_forward(*args))
        with pytest.raises(ValueError, match="kernels='fast'.*auto, compiled, eager"):
            set_kernels("fast")
    finally:
        set_kernels(previous)


def test_int16_saved_psums_give_the_same_gradients_and_half_the_memory():
    """Integer partial sums below 2^15 saved as int16 for the backward pass: the same gradients, exactly."""
    psum, step, factor, qmin, qmax, upstream = _integer_psum_case(seed=2, magnitude=5000)
    results = []
    for int16 in (False, True):
        saved: list[torch.Tensor] = []

        def pack(t: torch.Tensor, saved: list[torch.Tensor] = saved) -> torch.Tensor:
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = adc_shift_add(psum, step, factor, qmin, qmax, int16_psums=int16)
        assert saved[0].dtype == (torch.int16 if int16 else torch.float32)
        results.append([y, *torch.autograd.grad((y * upstream).sum(), (psum, step, factor))])
    for plain, compact in zip(*results, strict=True):
        torch.testing.assert_close(compact, plain, rtol=0, atol=0)  # the same float32 inputs to the same kernel
