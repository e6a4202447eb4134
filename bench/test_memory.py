"""Memory: every variant's figures, the orderings the analytic model guarantees, the model itself.

Asserted orders, each derived from bench/analytic.py (see its docstring for the counts):
- eager: none > mlp > every_other > attn > full, on saved_bytes and activation_peak_bytes.
  Checkpointing a sublayer replaces what it saves by its input; eager attention saves
  7*bsd + h*s^2 per block against the MLP's 6*bsd, so once h*s^2 dominates, dropping the
  attention sublayers of all blocks but one (attn) beats dropping both sublayers of half of
  them (every_other), which beats dropping the MLPs (mlp).
- X-sdpa < X-eager for every X: sdpa keeps a logsumexp (h*s floats) instead of h*s^2
  probabilities for each attention sublayer not checkpointed (block 0 always is not).
- none-sdpa > full-sdpa.
- where the model predicts it (seed, small): checkpointing attention saves several (>= 3)
  times more than checkpointing the MLP, with eager attention.
Left out, because the model does not guarantee them:
- the sdpa chain: with sdpa, attention saves 6*bsd and the MLP 6*bsd, so attn-sdpa and
  mlp-sdpa are a near tie (they differ by LayerNorm statistics and logsumexp), and
  every_other-sdpa against both depends on depth parity.
- activation_peak_bytes against the model: the peak adds backward's transients (gradients of
  activations, recomputation), which the saved-tensor count does not describe.
"""

from __future__ import annotations

import pytest

from bench import analytic
from bench.cases import Case
from bench.record import is_estimate, measure_variant

#: Relative margin each asserted inequality must clear: MemTracker counts exact storage
#: bytes; the CUDA allocator adds block rounding and workspace noise.
ORDER_MARGIN = {"memtracker": 0.01, "fake-memtracker": 0.01, "cuda-allocator": 0.02}
EAGER_CHAIN = ("none", "mlp", "every_other", "attn", "full")
ANALYTIC_TOLERANCE = 0.02
SEVERAL_TIMES = 3.0

RECORD_FIELDS = ("variant", "strategy", "attention", "flavor", "device", "dtype", "batch", "seq_len",
                 "d_model", "n_heads", "depth", "torch_version", "memory_method", "resident_bytes",
                 "peak_bytes", "activation_peak_bytes", "saved_bytes")



def expected_method(case: Case) -> str:
    if case.device == "cuda":
        return "cuda-allocator"
    return "fake-memtracker" if is_estimate(case.flavor, case.device) else "memtracker"


def test_memory_record(case, measurements):
    """The record carries every field, the right method, and self-consistent figures."""
    record = measurements.get(case)
    data = record.as_dict()
    assert all(data[f] is not None for f in RECORD_FIELDS)
    assert (record.variant, record.flavor, record.memory_method) == (case.variant, case.flavor.name, expected_method(case))
    assert record.resident_bytes > 0 and record.saved_bytes > 0
    assert record.peak_bytes >= record.resident_bytes
    # Everything saved for backward is alive at the end of the forward.
    assert record.activation_peak_bytes >= record.saved_bytes
    if record.breakdown is not None:  # MemTracker's categories add up to the peak
        assert sum(record.breakdown.values()) == record.peak_bytes
        assert record.breakdown["parameters"] == analytic.parameter_bytes(analytic.Shape.of_record(record))


def test_saved_bytes_match_analytic_model(case, measurements):
    """Measured saved_bytes within 2% of the per-op count of bench/analytic.py."""
    record = measurements.get(case)
    predicted = analytic.saved_bytes(analytic.Shape.of_record(record), case.strategy, case.attention)
    assert record.saved_bytes == pytest.approx(predicted, rel=ANALYTIC_TOLERANCE), (
        f"{case.id}: measured {record.saved_bytes:,} B, analytic model {predicted:,} B")


def _records(measurements, device: str, flavor) -> dict:
    return {r.variant: r for r in (measurements.get(Case(device, flavor, v)) for v in
            (f"{s}-{a}" for s in EAGER_CHAIN for a in ("eager", "sdpa")))}


def _check_chain(values: dict[str, int], chain: list[str], margin: float) -> list[str]:
    return [f"{a} ({values[a]:,} B) should exceed {b} ({values[b]:,} B) by {margin:.0%}"
            for a, b in zip(chain, chain[1:]) if not values[a] > values[b] * (1 + margin)]


def _require_predicted(shape: analytic.Shape, chain: list[str], attention: str, margin: float) -> None:
    """Skip unless the model predicts the chain clearly: attention's seq^2 term dominates the
    rest of the attention sublayer (h*s^2 > 7*s*d per batch row, i.e. s > 7*d/h; it
    also decides the activation peak) and each predicted gap clears twice the margin."""
    crossover = 7 * shape.d_model / shape.n_heads
    if shape.seq_len <= crossover:
        pytest.skip(f"seq_len {shape.seq_len} <= 7*d/h = {crossover:.0f}: attention's seq^2 term does not "
                    f"dominate activation memory at this shape, so the model guarantees no order")
    predicted = {s: analytic.saved_bytes(shape, s, attention) for s in chain}
    weak = [f"{a}>{b}" for a, b in zip(chain, chain[1:]) if not predicted[a] > predicted[b] * (1 + 2 * margin)]
    if weak:
        pytest.skip(f"the analytic model does not predict {', '.join(weak)} by a margin above noise at this "
                    f"shape, so the order is not asserted")


@pytest.mark.parametrize("metric", ["saved_bytes", "activation_peak_bytes"])
def test_eager_strategy_ordering(flavor_on_device, metric, measurements):
    """eager: none > mlp > every_other > attn > full."""
    device, flavor = flavor_on_device
    records = _records(measurements, device, flavor)
    margin = ORDER_MARGIN[records["none-eager"].memory_method]
    _require_predicted(analytic.Shape.of_record(records["none-eager"]), list(EAGER_CHAIN), "eager", margin)
    values = {s: getattr(records[f"{s}-eager"], metric) for s in EAGER_CHAIN}
    problems = _check_chain(values, list(EAGER_CHAIN), margin)
    assert not problems, f"{metric} on {device}-{flavor.name}: " + "; ".join(problems)


@pytest.mark.parametrize("metric", ["saved_bytes", "activation_peak_bytes"])
def test_sdpa_below_eager_twin(flavor_on_device, metric, measurements):
    """Each X-sdpa below X-eager; none-sdpa above full-sdpa."""
    device, flavor = flavor_on_device
    records = _records(measurements, device, flavor)
    margin = ORDER_MARGIN[records["none-eager"].memory_method]
    _require_predicted(analytic.Shape.of_record(records["none-eager"]), ["none", "full"], "sdpa", margin)
    values = {v: getattr(r, metric) for v, r in records.items()}
    problems = []
    for strategy in EAGER_CHAIN:
        problems += _check_chain(values, [f"{strategy}-eager", f"{strategy}-sdpa"], margin)
    problems += _check_chain(values, ["none-sdpa", "full-sdpa"], margin)
    assert not problems, f"{metric} on {device}-{flavor.name}: " + "; ".join(problems)


@pytest.mark.parametrize("metric", ["saved_bytes", "activation_peak_bytes"])
def test_attention_checkpointing_saves_several_times_more_than_mlp(flavor_on_device, metric, measurements):
    """eager: (none - attn) >= 3 x (none - mlp), where the analytic model predicts it."""
    device, flavor = flavor_on_device
    records = _records(measurements, device, flavor)
    shape = analytic.Shape.of_record(records["none-eager"])
    pred = {s: analytic.saved_bytes(shape, s, "eager") for s in ("none", "attn", "mlp")}
    predicted_ratio = (pred["none"] - pred["attn"]) / (pred["none"] - pred["mlp"])
    if predicted_ratio < 2 * SEVERAL_TIMES:
        pytest.skip(f"the analytic model predicts a ratio of {predicted_ratio:.1f} at this shape, "
                    f"not clearly several times")
    value = {s: getattr(records[f"{s}-eager"], metric) for s in ("none", "attn", "mlp")}
    ratio = (value["none"] - value["attn"]) / (value["none"] - value["mlp"])
    assert ratio >= SEVERAL_TIMES, f"{metric}: attn saves only {ratio:.2f}x what mlp saves (predicted {predicted_ratio:.1f}x)"


@pytest.mark.cuda_only
def test_fake_estimate_matches_cuda(cuda_case, measurements):
    """On CUDA, the CPU fake-tensor estimate of activation_peak_bytes is within 10%."""
    if not is_estimate(cuda_case.flavor, "cpu"):
        pytest.skip(f"{cuda_case.flavor.name} is measured for real on the CPU, not estimated")
    measured = measurements.get(cuda_case)
    estimate = measure_variant(cuda_case.flavor, cuda_case.variant, "cpu")
    assert estimate.activation_peak_bytes == pytest.approx(measured.activation_peak_bytes, rel=0.10), (
        f"{cuda_case.id}: CUDA {measured.activation_peak_bytes:,} B vs fake-tensor estimate "
        f"{estimate.activation_peak_bytes:,} B")
