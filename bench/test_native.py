"""A library's own checkpointing switch does what the suite's policy of the same semantics does.

``native`` is transformers' ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=
{"use_reentrant": False})``, measured as the library applies it; ``whole_layers`` is the suite's
``checkpoint_wrapper`` around every decoder layer, layer 0 included, which is what transformers
5.18 documents and implements (``GradientCheckpointingLayer.__call__`` runs the layer under
``torch.utils.checkpoint`` with its keyword arguments bound, hidden states positional). The two
checkpoint the same regions with the same inputs and run the same ops, so every metric of the
registry is equal, bytes and FLOPs alike, exactly where memory is counted exactly: a switch that
leaves layers out, or silently does nothing (a model's override), fails here, as does one that
checkpoints more. Families without such a switch do not run ``native`` and skip with the reason.
"""

from __future__ import annotations

import pytest

from ac_bench.cases import Case
from ac_bench.metrics import METRICS
from ac_bench.models import family_of

#: Relative tolerance of the byte metrics where the CUDA allocator counts them (block rounding,
#: workspaces); exact elsewhere. FLOPs are exact everywhere.
CUDA_ALLOCATOR_TOLERANCE = 0.02


@pytest.mark.parametrize("attention", ("eager", "sdpa"))
def test_native_switch_equals_whole_layers(flavor_on_device, attention, measurements):
    """Every metric of ``native-X`` equals ``whole_layers-X``'s, FLOPs by op included; and the
    switch checkpoints something: both keep less than ``none-X`` for backward."""
    device, flavor = flavor_on_device
    family = family_of(flavor)
    wanted = [f"{p}-{attention}" for p in ("none", "whole_layers", "native")]
    absent = [v for v in wanted if v not in family.variants()]
    if absent:
        pytest.skip(f"{flavor.name}: family {family.name!r} does not run {', '.join(absent)} (a transformers "
                    f"family does: --model-spec ac_bench.models.hf:ALL)")
    none, layers, native = (measurements.get(Case(device, flavor, v)) for v in wanted)
    exact = native.memory_method != "cuda-allocator"
    differ = [f"{m}: native {getattr(native, m)!r}, whole_layers {getattr(layers, m)!r}" for m in METRICS
              if getattr(native, m) != (getattr(layers, m) if exact or METRICS[m].unit != "B"
                                        else pytest.approx(getattr(layers, m), rel=CUDA_ALLOCATOR_TOLERANCE))]
    assert not differ, f"{flavor.name}-native-{attention} differs from whole_layers:\n" + "\n".join(differ)
    assert native.flops_by_op == layers.flops_by_op, flavor.name
    assert native.forward_kept_bytes < none.forward_kept_bytes, (
        f"{flavor.name}-native-{attention} keeps {native.forward_kept_bytes:,} B, none {none.forward_kept_bytes:,} B: "
        f"the switch checkpoints nothing")
