"""The metric registry: every figure the gate compares, the JSON carries and the report shows,
declared once (name, unit, relative tolerance, meaning). A new metric is one line here and is
gated by default.

Tolerances: MemTracker and FlopCounterMode are exact on the CPU; the CUDA allocator rounds
blocks, so memory tolerances leave a little room without hiding a lost saving. An op count is
exact on every device: its tolerance (0.01%) is below one op for every count under 10,000; the
bytes those ops read and write are counted from tensor sizes, exact on every device too, and get
the same 0.01%. A predicted figure (``estimates``) is gated twice: against its own baseline, and
its distance from the figure it predicts against the baseline's distance.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The largest value a metric may have in any file the suite reads (a baselines file, a run's
#: JSON): what a signed 64-bit counter of bytes or FLOPs holds. A larger one is a broken file,
#: not a figure (and no float can hold a 400-digit one).
MAX_FIGURE = 2**63 - 1


@dataclass(frozen=True)
class Metric:
    """One gated figure: its record field, unit (``B`` bytes, ``FLOP``), the relative tolerance
    the gate allows in either direction, what it means (the report's definition)."""

    name: str
    unit: str
    tolerance: float
    meaning: str
    #: May be null in a record: not measurable for that policy (with a ``{name}_note`` saying why,
    #: where the reason varies: ``saved_bytes``), or not predicted (``predicted_peak_bytes``).
    nullable: bool = False
    #: The report's column header for this metric (``ac_bench.report.tables``), or None: not a column.
    column: str | None = None
    #: The tolerance for figures from the CUDA caching allocator (``memory_method`` ``cuda-allocator``)
    #: where it differs from ``tolerance``; None: the same.
    allocator_tolerance: float | None = None
    #: The report shows, beside the figure, how much it exceeds `none`'s with the same attention:
    #: a recompute cost (``ac_bench.report.tables``).
    beyond_none: bool = False
    #: The metric this one predicts (``predicted_peak_bytes`` predicts ``peak_bytes``), or None.
    #: The gate (``ac_bench.gate.baselines.compare``) also fails where the measured figure moved
    #: away from the prediction: their difference, against the baseline entry's, beyond this
    #: metric's tolerance of the prediction; the message names both figures.
    estimates: str | None = None


METRICS: dict[str, Metric] = {m.name: m for m in (
    # On CUDA, gradients and AdamW state land in cached blocks freed by the warm-up's activations,
    # larger than requested: on the H200 (torch 2.11, 2026-11-30, scripts/cuda_resident.py) these
    # two moved by up to 1.3% between runs of the same variant, so the allocator's figures get 3%.
    Metric("resident_bytes", "B", 0.01, "allocated before the step: parameters, gradients, optimizer state, input",
           allocator_tolerance=0.03),
    Metric("peak_bytes", "B", 0.02, "the training step's peak allocation", column="peak MiB"),
    Metric("optimizer_step_peak_bytes", "B", 0.02,
           "the peak allocation during optimizer.step(): parameters, gradients, optimizer state and the "
           "update's temporaries (AdamW's foreach implementation keeps a copy of every parameter's update)",
           allocator_tolerance=0.03),
    Metric("activation_peak_bytes", "B", 0.02,
           "the forward+backward peak above what was allocated just before the forward", column="act. peak MiB"),
    Metric("forward_kept_bytes", "B", 0.01,
           "device bytes still allocated after the forward minus those before it, less the output: "
           "what the policy keeps for backward, SAC's cache included", column="kept MiB"),
    Metric("saved_bytes", "B", 0.01,
           "bytes autograd saved for backward (saved_tensors_hooks, by storage; parameters and input "
           "excluded); null where hooks cannot see what is kept", nullable=True, column="saved MiB"),
    Metric("offloaded_bytes", "B", 0.01, "bytes moved from the device to host memory by save_on_cpu",
           column="offloaded MiB"),
    Metric("flops", "FLOP", 0.005, "matmul FLOPs of forward+backward, recomputation included"),
    Metric("backward_ops", "op", 0.0,
           "aten ops that compute or copy (views and profiler markers left out) dispatched during backward, "
           "recomputation included: the elementwise, normalisation and copy ops a policy recomputes, which FLOPs do not "
           "count", column="bwd ops", beyond_none=True),
    Metric("backward_nonmatmul_bytes", "B", 0.0,
           "bytes read and written during backward, recomputation included, by the ops backward_ops counts "
           "that are not matmuls (no FLOP formula: mm, addmm, bmm and the SDPA kernels are left out): each "
           "op's tensor arguments and results at their nbytes, an in-place op's tensor once read and once "
           "written; the memory traffic of the elementwise, normalisation and copy ops a policy recomputes, "
           "which FLOPs do not count", column="bwd non-matmul MiB", beyond_none=True),
    Metric("predicted_peak_bytes", "B", 0.0001,
           "the step peak the per-block planner's model predicts for its plan (ac_bench.blockplan), recorded "
           "with the plan's measured step; null for every other policy and for a plan no planner chose",
           nullable=True, allocator_tolerance=0.02, estimates="peak_bytes"),
)}

#: Recorded with each baseline entry and compared for identity (another method is not comparable).
INFO_FIELDS: tuple[str, ...] = ("memory_method", "torch_version")

DEFAULT_TOLERANCES: dict[str, float] = {m.name: m.tolerance for m in METRICS.values()}


def declared_tolerances(memory_method: str | None) -> dict[str, float]:
    """Each metric's declared tolerance for figures measured by ``memory_method``: the CUDA
    allocator's (``cuda-allocator``) where the metric declares one, else ``DEFAULT_TOLERANCES``."""
    allocator = memory_method == "cuda-allocator"
    return {m.name: m.allocator_tolerance if allocator and m.allocator_tolerance is not None else m.tolerance
            for m in METRICS.values()}
