"""Sequence-length sweeps: each variant measured at several sequence lengths, beside the
analytic prediction, and the longest swept length that fits a memory budget.

A sweep point is ``ac_bench.record.measure_variant`` on ``dataclasses.replace(flavor,
seq_len=N)``: on the CPU an ``estimate`` flavor (``seed``) runs on fake tensors, elsewhere
the step is run for real. On CUDA a step that runs out of memory is a result ("OOM"), not a
crash (``ac_bench.probes.device.OutOfMemoryError``).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch

from ac_bench import analytic
from ac_bench.models import Flavor, parse_variant, resolve_dtype
from ac_bench.probes.device import OutOfMemoryError
from ac_bench.record import OUT_OF_MEMORY, Measurement, measure_variant

DEFAULT_SEQ_LENS: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384)

#: ``measure_variant``'s signature; tests pass a fake one.
MeasureFn = Callable[[Flavor, str, "str | torch.device"], Measurement]


@dataclass(frozen=True)
class SweepPoint:
    """One variant at one sequence length: its record (None: out of memory) and what the
    analytic model predicts for it, which needs no measurement: the bytes kept for backward
    and the recompute FLOPs as a fraction of ``none``'s step (both None where the family
    declares no analytic model)."""

    variant: str
    seq_len: int
    record: Measurement | None
    predicted_saved_bytes: int | None
    predicted_flop_overhead: float | None

    @property
    def oom(self) -> bool:
        return self.record is None


def shape_at(flavor: Flavor, device: str | torch.device) -> analytic.Shape:
    """The analytic model's shape of ``flavor`` as ``measure_variant`` builds it on ``device``."""
    device = torch.device(device)
    return analytic.Shape.of(flavor, resolve_dtype(flavor, device), device.type)


def measure_point(flavor: Flavor, variant: str, device: str | torch.device,
                  measure: MeasureFn = measure_variant) -> SweepPoint:
    """Measure one point; a CUDA out-of-memory error becomes a point without a record."""
    strategy, attention = parse_variant(variant)
    shape = shape_at(flavor, device)
    try:
        predicted_kept = analytic.kept_bytes(shape, strategy, attention)
        recomputed = analytic.recompute_flops(shape, strategy, attention) / analytic.step_flops(shape, "none", attention)
    except analytic.NotModelled:  # a family without an analytic model (a --model-spec one): measured only
        predicted_kept, recomputed = None, None
    try:
        record: Measurement | None = measure(flavor, variant, device)
    except OutOfMemoryError:
        # The failed step's tensors die with the exception's frames when this block ends;
        # the next CudaAllocatorProbe collects garbage and empties the cache before measuring.
        record = None
    if record is not None and record.outcome == OUT_OF_MEMORY:  # measure_variant's own record of it
        record = None
    return SweepPoint(
        variant=variant, seq_len=flavor.seq_len, record=record,
        predicted_saved_bytes=predicted_kept,
        predicted_flop_overhead=recomputed,
    )


def _timed_point(flavor: Flavor, variant: str, device: str, measure: MeasureFn) -> tuple[SweepPoint, float]:
    start = time.perf_counter()
    point = measure_point(flavor, variant, device, measure)
    return point, time.perf_counter() - start


def _worker_start(model_specs: tuple[str, ...] = ()) -> None:
    """A spawned worker: one thread (a worker per core, no oversubscription on real CPU tensors),
    and the ``--model-spec`` families registered, as in the parent."""
    torch.set_num_threads(1)
    from ac_bench.models import load_family_spec
    for spec in model_specs:
        load_family_spec(spec)


def run_sweep(flavor: Flavor, variants: Sequence[str], seq_lens: Iterable[int], device: str | torch.device,
              measure: MeasureFn = measure_variant,
              progress: Callable[[SweepPoint, float], None] | None = None, jobs: int = 1,
              model_specs: Sequence[str] = ()) -> list[SweepPoint]:
    """Every variant at every sequence length, shortest first; ``progress`` gets each point
    and the seconds it took, as it completes.

    ``jobs`` > 1 measures points in that many worker processes (CPU only: points share no
    memory there and are not timed; ``measure`` must then be picklable, a module-level function).
    Each worker registers ``model_specs`` (``package.module:NAME``, as ``--model-spec``) first, so
    that a user's family is known there too. Raises ValueError for ``jobs`` > 1 off the CPU.
    """
    device = str(device)
    tasks = [(dataclasses.replace(flavor, seq_len=s), v) for s in sorted(set(seq_lens)) for v in variants]
    if jobs > 1 and torch.device(device).type != "cpu":
        raise ValueError(f"jobs={jobs}: parallel sweeps are for the CPU; on {device} points share the device")
    points: list[SweepPoint | None] = [None] * len(tasks)
    if jobs <= 1:
        for i, (shaped, variant) in enumerate(tasks):
            points[i], seconds = _timed_point(shaped, variant, device, measure)
            if progress is not None:
                progress(points[i], seconds)
        return points
    context = multiprocessing.get_context("spawn")  # fork after torch is imported is unsafe
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_start,
                             initargs=(tuple(model_specs),)) as pool:
        futures = {pool.submit(_timed_point, shaped, variant, device, measure): i
                   for i, (shaped, variant) in enumerate(tasks)}
        for future in as_completed(futures):
            points[futures[future]], seconds = future.result()
            if progress is not None:
                progress(points[futures[future]], seconds)
    return points


@dataclass(frozen=True)
class BudgetFit:
    """A variant's longest swept sequence length within a budget: ``point`` is None when not
    even the shortest fits; ``open_ended`` when the longest swept length fits, so that
    longer ones may fit too."""

    variant: str
    point: SweepPoint | None
    open_ended: bool


def fits(point: SweepPoint, budget_bytes: int) -> bool:
    """The whole step's peak (parameters, gradients, optimizer state included) within budget."""
    return point.record is not None and point.record.peak_bytes <= budget_bytes


def longest_fitting(points: Iterable[SweepPoint], budget_bytes: int) -> BudgetFit:
    """The longest sequence length before the first that does not fit (OOM or over budget),
    for one variant's points: memory grows with the length, so a longer length that fits
    after one that did not is noise, not a result."""
    ordered = sorted(points, key=lambda p: p.seq_len)
    if not ordered or len({p.variant for p in ordered}) != 1:
        raise ValueError("longest_fitting needs the points of exactly one variant")
    best = None
    for point in ordered:
        if not fits(point, budget_bytes):
            return BudgetFit(ordered[0].variant, best, open_ended=False)
        best = point
    return BudgetFit(ordered[0].variant, best, open_ended=True)


def budget_fits(points: Iterable[SweepPoint], budget_bytes: int) -> list[BudgetFit]:
    """``longest_fitting`` for each variant of a sweep, in the sweep's order."""
    by_variant: dict[str, list[SweepPoint]] = {}
    for point in points:
        by_variant.setdefault(point.variant, []).append(point)
    return [longest_fitting(ps, budget_bytes) for ps in by_variant.values()]

