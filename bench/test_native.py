"""A library's own checkpointing switch does what the suite's policy of the same semantics does.

``native`` is the model's own switch, measured as the library applies it: transformers'
``gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``, or
torchtitan's ``FullAC`` (``ac_bench.models.titan``). ``whole_layers`` is the suite's
``checkpoint_wrapper`` around every decoder layer, layer 0 included, which is what transformers
5.18 documents and implements (``GradientCheckpointingLayer.__call__`` runs the layer under
``torch.utils.checkpoint`` with its keyword arguments bound, hidden states positional) and what
torchtitan's ``FullAC`` wraps. The two checkpoint the same regions with the same inputs and run
the same ops, so every metric of the registry is equal, bytes and FLOPs alike, exactly where
memory is counted exactly: a switch that leaves layers out, or silently does nothing (a model's
override), fails here, as does one that checkpoints more. Families without such a switch do not
run ``native`` and skip with the reason.

One difference is declared, never tolerated: torchtitan's ``FullAC`` passes ``early_stop=False``
(``Family.native_no_early_stop``), so backward recomputes each layer's whole forward. There
``native`` must have every figure of ``whole_layers`` with the early stop off
(``LayerAC(early_stop=False)``, measured here), and that policy must keep what ``whole_layers``
keeps, byte for byte, and recompute exactly each layer's forward after its last saved tensor
more, as the layers measured on their own say (``ac_bench.regions``).
"""

from __future__ import annotations

import pytest

from ac_bench.cases import Case
from ac_bench.metrics import METRICS
from ac_bench.models import LayerAC, family_of
from ac_bench.record import measure_variant
from ac_bench.regions import measure_regions

#: Relative tolerance of the byte metrics where the CUDA allocator counts them (block rounding,
#: workspaces); exact elsewhere. FLOPs are exact everywhere.
CUDA_ALLOCATOR_TOLERANCE = 0.02

#: ``whole_layers`` with non-reentrant checkpointing's early stop off: torchtitan's ``FullAC``.
WHOLE_LAYERS_NO_EARLY_STOP = LayerAC("whole_layers_no_early_stop", early_stop=False)


def _differing(record, reference, metrics) -> list[str]:
    """The metrics of ``metrics`` on which ``record`` and ``reference`` differ, one line each."""
    exact = record.memory_method != "cuda-allocator"
    return [f"{m}: {record.policy} {getattr(record, m)!r}, {reference.policy} {getattr(reference, m)!r}"
            for m in metrics
            if getattr(record, m) != (getattr(reference, m) if exact or METRICS[m].unit != "B"
                                      else pytest.approx(getattr(reference, m), rel=CUDA_ALLOCATOR_TOLERANCE))]


@pytest.mark.parametrize("attention", ("eager", "sdpa"))
def test_native_switch_equals_whole_layers(flavor_on_device, attention, measurements):
    """Every metric of ``native-X`` equals ``whole_layers-X``'s (with the early stop off where the
    family declares it), FLOPs by op included; and the switch checkpoints something: it keeps
    less than ``none-X`` for backward."""
    device, flavor = flavor_on_device
    family = family_of(flavor)
    if attention not in family.attentions:
        pytest.skip(f"{flavor.name}: family {family.name!r} has no {attention} attention "
                    f"(it declares {', '.join(family.attentions)})")
    wanted = [f"{p}-{attention}" for p in ("none", "whole_layers", "native")]
    absent = [v for v in wanted if v not in family.variants()]
    if absent:
        pytest.skip(f"{flavor.name}: family {family.name!r} does not run {', '.join(absent)} (the transformers "
                    f"families run them with both attentions, --model-spec ac_bench.models.hf:ALL; torchtitan's with "
                    f"sdpa, ac_bench.models.titan:ALL)")
    none, layers, native = (measurements.get(Case(device, flavor, v)) for v in wanted)
    reference = layers
    if family.native_no_early_stop:
        reference = measure_variant(flavor, f"whole_layers-{attention}", device, policy=WHOLE_LAYERS_NO_EARLY_STOP)
    differ = _differing(native, reference, METRICS)
    assert not differ, f"{flavor.name}-native-{attention} differs from {reference.policy}:\n" + "\n".join(differ)
    assert native.flops_by_op == reference.flops_by_op, f"{flavor.name}-native-{attention}: FLOPs by op"
    assert native.forward_kept_bytes < none.forward_kept_bytes, (
        f"{flavor.name}-native-{attention} keeps {native.forward_kept_bytes:,} B, none {none.forward_kept_bytes:,} B: "
        f"the switch checkpoints nothing")
    if not family.native_no_early_stop:
        return
    # The declared difference, bounded exactly: the same bytes, and the layers' forward after their last save.
    label = f"{flavor.name}-{WHOLE_LAYERS_NO_EARLY_STOP.name}-{attention} against whole_layers"
    byte_metrics = [m for m in METRICS if METRICS[m].unit == "B"]
    differ = _differing(reference, layers, byte_metrics)
    assert not differ, f"{label}: the bytes differ ({family.native_no_early_stop}):\n" + "\n".join(differ)
    profile = measure_regions(flavor, attention, device)
    extra = profile.recompute_flops(WHOLE_LAYERS_NO_EARLY_STOP) - profile.recompute_flops("whole_layers")
    assert reference.flops - layers.flops == extra > 0, (
        f"{label}: recomputes {reference.flops - layers.flops:,} FLOPs more, the layers' forwards after their last "
        f"save {extra:,} ({family.native_no_early_stop}); {profile.describe('whole_layers')}")
    assert reference.backward_ops > layers.backward_ops, (
        f"{label}: {reference.backward_ops} ops in backward, whole_layers {layers.backward_ops}: nothing more recomputed")
