"""Tables: one set of formatted cells per table, rendered as text or Markdown; the report's
table per flavor and device, the moves between runs, and the sweep's tables.

What a column means is the metric registry's ``meaning`` and ``unit`` (``ac_bench.metrics``);
a metric that is null for a policy shows as ``-``, its note beside the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ac_bench.metrics import METRICS
from ac_bench.models import parse_variant, variant_id
from ac_bench.outputs import flops_text, significant_decimals, write_text_atomic
from ac_bench.record import OK, READABLE_VERSIONS, Measurement
from ac_bench.report.frontier import (
    BEYOND_NONE,
    MIB,
    TIME,
    Group,
    flop_overhead,
    group_order,
    joint_axes,
    pareto_front,
    run_groups,
    shares_cores,
    variant_order,
)
from ac_bench.report.load import ESTIMATE_METHOD, Run
from ac_bench.sweep import BudgetFit, SweepPoint

GIB = 2 ** 30
ESTIMATE_LABEL = "estimate: fake tensors, no compute, not timed"
NULL = "-"
#: Marks a figure in "Moved between runs" whose move the baseline gate would pass (``within_gate``).
WITHIN_GATE = "[within the gate's tolerance]"


@dataclass(frozen=True)
class Table:
    """A titled table of formatted cells; the first ``left`` columns are names, the last
    ``trailing_text`` columns text (both aligned left), the rest figures (aligned right)."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()
    left: int = 1
    trailing_text: int = 0

    def _is_text(self, column: int) -> bool:
        return column < self.left or column >= len(self.header) - self.trailing_text

    def _aligned(self, cells: Sequence[str], widths: Sequence[int]) -> str:
        return "  ".join(c.ljust(w) if self._is_text(i) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    def text(self) -> str:
        if not self.rows and self.notes:  # the notes say why there is no row: no empty header under them
            return "\n".join([self.title, *self.notes])
        widths = [max(len(c) for c in column) for column in zip(self.header, *self.rows)]
        lines = [self.title, *self.notes, self._aligned(self.header, widths),
                 self._aligned(["-" * w for w in widths], widths)]
        return "\n".join(lines + [self._aligned(r, widths) for r in self.rows])

    def markdown(self) -> str:
        rule = ["---" if self._is_text(i) else "--:" for i in range(len(self.header))]
        lines = [f"## {self.title}", ""] + ([*self.notes, ""] if self.notes else [])
        if not self.rows and self.notes:
            return "\n".join(lines[:-1])
        lines += ["| " + " | ".join(cells) + " |" for cells in (self.header, rule, *self.rows)]
        return "\n".join(lines)


def render(title: str, intro: Sequence[str], tables: Sequence[Table], markdown: bool) -> str:
    """A whole document: title, introductory paragraphs, tables."""
    if markdown:
        return "\n\n".join([f"# {title}", *intro, *(t.markdown() for t in tables)]) + "\n"
    return "\n\n".join([title, *intro, *(t.text() for t in tables)]) + "\n"


def write_text(path: Path, text: str) -> None:
    """Write a rendered document atomically (``ac_bench.outputs.write_text_atomic``: an earlier
    file stays whole if the write fails), creating its folder. An OSError names ``path``."""
    try:
        write_text_atomic(Path(path), text)
    except OSError as exc:  # a full disk raises from write() with no file name
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def mib(n: int | None) -> str:
    """Bytes as MiB with a thousands separator, to one decimal, and to 3 significant digits
    below 100 MiB (``0.748``, ``5.30``: a small flavor's table read 0.7 in every row); the unit
    stays MiB, so that tables of different runs compare at a glance. ``-`` for a null figure."""
    if n is None:
        return NULL
    value = n / MIB
    if value == 0 or abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:,.{max(1, significant_decimals(value))}f}"


def pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:+.1f}%"


def _maybe(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


# --- what the columns mean -------------------------------------------------------------------

#: Columns showing a byte metric in MiB, header -> metric name: every metric of the registry
#: (``ac_bench.metrics.METRICS``) that declares a report column, in the registry's order, less
#: those shown against `none` (``BEYOND_NONE_COLUMNS``).
MIB_COLUMNS: dict[str, str] = {m.column: m.name for m in METRICS.values()
                               if m.column and m.unit == "B" and not m.beyond_none}
#: Columns of a recompute cost that FLOPs do not count, header -> metric name (``Metric.beyond_none``:
#: ``backward_ops``, ``backward_nonmatmul_bytes``): the figure and, in brackets, how much it
#: exceeds `none`'s with the same attention.
BEYOND_NONE_COLUMNS: dict[str, str] = {METRICS[name].column: name for name in BEYOND_NONE}
#: The memory columns of a sweep (offloading shows in the report's table).
SWEEP_MIB_COLUMNS = ("peak MiB", "act. peak MiB", "kept MiB", "saved MiB")


def _metric_bullet(header: str, name: str) -> str:
    metric = METRICS[name]
    unit = "MiB (2^20 bytes)" if metric.unit == "B" else metric.unit
    null = (f"; `{NULL}` where the record has none (its `{name}_note` says why)" if metric.nullable else "")
    return f"- {header}: `{name}` in {unit}, {metric.meaning}{null}."


def beyond_none_cell(name: str, value: int | None, extra: int | None) -> str:
    """``112 (+18)`` ops, ``1.2 (+0.2)`` MiB: the figure of ``name`` (a ``BEYOND_NONE_COLUMNS``
    metric) and how much it exceeds `none`'s (``Row.beyond_none``); ``-`` where not measured."""
    if value is None:
        return NULL
    in_mib = METRICS[name].unit == "B"
    text = mib(value) if in_mib else f"{value:,}"
    if extra is None:
        return text
    if not in_mib:
        return f"{text} ({extra:+,})"
    return f"{text} ({'' if extra < 0 else '+'}{mib(extra)})"


def _beyond_none_bullet(header: str, name: str) -> str:
    metric = METRICS[name]
    unit = "MiB (2^20 bytes)" if metric.unit == "B" else f"{metric.unit}s"
    older = max(v for v, added in READABLE_VERSIONS.items() if name in added)
    return (f"- {header}: `{name}` in {unit}, {metric.meaning}; in brackets, how much more than `none` with the "
            f"same attention (the recompute); `{NULL}` in records that predate it (schema version {older} and "
            f"older).")


def _flops_bullet() -> str:
    metric = METRICS["flops"]
    return (f"- FLOP overhead: `flops` ({metric.meaning}) over `flops` of `none` with the same attention, "
            f"minus 1: the recomputation.")


#: The bullets that say what each column means; a document lists those its tables use.
#: What a figure traced on fake tensors is (the ``estimate`` and ``figures`` bullets).
_TRACED = "exact bytes and FLOPs as PyTorch allocates them on the CPU, no compute, no timing"
DEFINITIONS: dict[str, str] = {
    "time": "- step ms: median of the timed training step (zero_grad, forward, backward, AdamW step); x none: that "
            "median over the median of `none` with the same attention; recompute ms: the median backward phase "
            "(recomputation included) minus `none`'s with the same attention; blank where not timed.",
    **{header: _metric_bullet(header, name) for header, name in MIB_COLUMNS.items()},
    "flops": _flops_bullet(),
    **{header: _beyond_none_bullet(header, name) for header, name in BEYOND_NONE_COLUMNS.items()},
    "frontier": "- frontier: no other variant is at least as fast and at least as small (peak) and strictly "
                "better in one; exact ties on both stay on the frontier. Faster: lower median step time when "
                "every variant of the table is timed (the ranks of a CPU launch, which share the cores, count as "
                "not timed), else lower FLOP overhead.",
    "kernel": "- kernel: the attention kernel that ran, read from the ops dispatched (`attention_kernel`): "
              "`cpu_flash`, `flash`, `efficient`, `cudnn`, or `math` (plain bmm and softmax: eager attention or "
              f"SDPA's math fallback); `{NULL}` in records that predate it (schema version 2).",
    "estimate": f"- estimate: memory method `{ESTIMATE_METHOD}`, the step traced on fake tensors: {_TRACED}.",
    "figures": f"- figures: `measured` where the step ran; `estimate` where it was traced on fake tensors (memory "
               f"method `{ESTIMATE_METHOD}`: {_TRACED}); otherwise the step's outcome (`out-of-memory`, "
               f"`non-finite-loss`).",
}


def definitions(*names: str) -> str:
    return "\n".join(DEFINITIONS[n] for n in names)


def null_notes(records: Sequence, headers: Sequence[str]) -> tuple[str, ...]:
    """Why a column shows ``-``: one line per (column, note), naming the variants."""
    notes: dict[tuple[str, str], list[str]] = {}
    for r in records:
        for header in headers:
            name = MIB_COLUMNS[header]
            if getattr(r, name) is None:
                note = (f"{r.outcome} ({r.outcome_note})" if r.outcome != OK
                        else getattr(r, f"{name}_note", None) or "not measured")
                notes.setdefault((header, note), []).append(r.variant)
    return tuple(f"{header} `{NULL}` for {', '.join(sorted(set(vs), key=variant_order))}: {note}."
                 for (header, note), vs in notes.items())


# --- the report ------------------------------------------------------------------------------


def run_labels(runs: Sequence[Run]) -> list[str]:
    """File names, or the paths as given where two runs share a name."""
    names = [r.path.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]


def group_table(group: Group, prefix: str = "") -> Table:
    """One flavor on one device: a row per variant."""
    rows = tuple((
        r.variant,
        _maybe(None if r.entry.median_s is None else r.entry.median_s * 1e3, ".1f"),
        _maybe(r.time_ratio, ".2f"),
        _maybe(None if r.recompute_s is None else r.recompute_s * 1e3, ".1f"),
        *(mib(getattr(r.entry.record, name)) for name in MIB_COLUMNS.values()),
        pct(r.flop_overhead),
        *(beyond_none_cell(name, getattr(r.entry.record, name), r.beyond_none.get(name))
          for name in BEYOND_NONE_COLUMNS.values()),
        "yes" if r.on_frontier else "",
        r.entry.record.outcome if r.entry.record.outcome != OK else "estimate" if r.entry.estimated else "measured",
        r.entry.record.attention_kernel or NULL,
    ) for r in group.rows)
    title = prefix + group.title + (f" ({ESTIMATE_LABEL})" if group.estimated else "")
    timed = any(r.entry.median_s is not None for r in group.rows)
    if group.axis == TIME:
        axis = "median step time"
    elif any(shares_cores(r.entry) for r in group.rows):
        axis = ("FLOP overhead (step ms: the median wall time of three steps of a CPU launch, the ranks sharing "
                "the cores: shown, not compared, so no x none)")
    else:
        axis = f"FLOP overhead ({'not every variant is' if timed else 'not'} timed)"
    notes = (f"Frontier on {axis} and peak.", *null_notes([r.entry.record for r in group.rows], MIB_COLUMNS))
    return Table(title, ("variant", "step ms", "x none", "recompute ms", *MIB_COLUMNS, "FLOP overhead",
                         *BEYOND_NONE_COLUMNS, "frontier", "figures", "kernel"),
                 rows, notes=notes)


def moved_figures(before: Measurement, after: Measurement) -> list[tuple[str, int, int]]:
    """Every figure the baseline gate compares (``ac_bench.metrics.METRICS``, in registry order)
    that differs at all between two records of one variant, as ``(name, before, after)``: they
    are exact (bytes, FLOPs, op counts), so any change counts; a figure that is None in either
    record (not measured, not predicted, out of memory) is not compared."""
    moved = []
    for name in METRICS:
        old, new = getattr(before, name), getattr(after, name)
        if old is not None and new is not None and old != new:
            moved.append((name, old, new))
    return moved


def within_gate(before: Measurement, name: str, new: int) -> bool:
    """Whether the baseline gate would pass ``before``'s figure ``name`` moving to ``new`` alone:
    the gate's own rule on ``before``'s entry at the registry's declared tolerances
    (``ac_bench.gate.baselines.compare``; ``ac_bench.distributed.compare_sharded`` for a rank of a
    real sharded launch, whose peaks may move by one block's FSDP buffers between launches)."""
    from ac_bench.gate.baselines import compare, entry_of
    from ac_bench.metrics import declared_tolerances
    rule = compare
    if before.world_size > 1 and before.sharding is None:
        from ac_bench.distributed import compare_sharded as rule
    moved = replace(before, **{name: new})
    return not rule(moved, entry_of(before), declared_tolerances(before.memory_method), fix="-")


def figure_change(name: str, before: int, after: int) -> str:
    """``forward_kept_bytes 0.122 -> 0.154 MiB (+25.5%)``, ``backward_ops 106 -> 104 (-1.9%)``,
    ``flops 7.77 MFLOP -> 7.80 MFLOP (+0.4%)``: one figure of ``moved_figures`` in the report's
    units (bytes in MiB as ``mib`` writes them, FLOPs in the unit they fill, counts whole). Where
    the rounded figures read the same, both are written exactly (``25,632.3`` MiB either side of a
    1 KiB change: ``26,877,345,792 -> 26,877,346,816 B``); no percentage from 0."""
    unit = METRICS[name].unit
    if unit == "B":
        old, new, suffix = mib(before), mib(after), " MiB"
    elif unit == "FLOP":
        old, new, suffix = flops_text(before), flops_text(after), ""
    else:
        old, new, suffix = f"{before:,}", f"{after:,}", ""
    if old == new:
        old, new, suffix = f"{before:,}", f"{after:,}", "" if unit == "op" else f" {unit}"
    change = f" ({pct(after / before - 1)})" if before else ""
    return f"{name} {old} -> {new}{suffix}{change}"


def _speed_text(value: float, axis: str) -> str:
    return f"{value:.1f} ms" if axis == TIME else f"{value:+.1f}%"


def _speed_cell(speed: float | None, axis: str) -> str:
    """A row's speed (``Row.speed``) as plotted, or ``-`` where it has none."""
    return NULL if speed is None else _speed_text(speed * (1e3 if axis == TIME else 100), axis)


def moves_table(runs: Sequence[Run]) -> Table:
    """What moved between consecutive runs, a row per variant both runs of a pair measured (same
    group: flavor, or a sharded run's rank, and device key): its peak and speed as the plot's
    arrows show them, and every other figure the baseline gate compares that changed
    (``moved_figures``). A variant is listed where its plotted point moved (``run_moves``: timing
    judged as the plot does) or any of those figures changed, even with the same peak and speed."""
    axes = joint_axes(runs)
    groups = [{g.key: g for g in run_groups(run, axes)} for run in runs]
    found = []
    for pair, (before, after) in enumerate(zip(groups, groups[1:])):
        for key in before.keys() & after.keys():
            axis, old = axes[key], {r.variant: r for r in before[key].rows}
            for row in after[key].rows:
                start_row = old.get(row.variant)
                if start_row is None:
                    continue
                start, end = start_row.plot_point(axis), row.plot_point(axis)
                arrow = start is not None and end is not None and start != end
                first, second = start_row.entry.record, row.entry.record
                figures = moved_figures(first, second)
                if not arrow and not figures:
                    continue
                peak = (mib(first.peak_bytes), mib(second.peak_bytes))
                within = {name for name, _, new in figures if within_gate(first, name, new)}
                # The peak column shows peak_bytes; listed again where its MiB read the same, or
                # to say that the gate would pass its move.
                others = [f for f in figures if f[0] != "peak_bytes" or peak[0] == peak[1] or f[0] in within]
                cells = (f"{key[0]} on {key[1]}", row.variant, f"{peak[0]} -> {peak[1]}",
                         f"{_speed_cell(start_row.speed(axis), axis)} -> {_speed_cell(row.speed(axis), axis)}",
                         "; ".join(figure_change(*f) + (f" {WITHIN_GATE}" if f[0] in within else "")
                                   for f in others))
                found.append(((*group_order(key), variant_order(row.variant), pair), cells))
    rows = tuple(cells for _, cells in sorted(found, key=lambda f: f[0]))

    def keys(run: Run) -> set[tuple]:
        return {(e.record.flavor, e.record.device_key, e.record.variant) for e in run.entries}
    shared = max((len(keys(a) & keys(b)) for a, b in zip(runs, runs[1:])), default=0)
    notes = ("Speed as plotted: median step time where both runs are timed, else FLOP overhead. Other figures "
             f"that moved: those the baseline gate compares ({', '.join(METRICS)}), listed where they differ at "
             "all; bytes in MiB (exact bytes where the MiB read the same), FLOPs in the unit they fill, ops as "
             f"counts; {WITHIN_GATE}: a move the baseline gate lets pass (within the registry's tolerance, or a "
             "sharded launch's peak within one block's FSDP buffers). A variant is listed where its peak or speed "
             "moved, or any of those figures.",) if shared else (
        "The runs share no variant of one flavor and device, so nothing could move: compare runs of the same tests.",)
    if shared and not rows:  # an empty table read as "not compared"
        notes += (f"Nothing moved: each of the {shared} variants the runs share has the same figures (peak, speed, "
                  f"and every gated figure) in both.",)
    return Table("Moved between runs",
                 ("group", "variant", "peak MiB", "time or FLOP overhead", "other figures that moved"), rows,
                 notes=notes, left=2, trailing_text=1)


def report_text(runs: Sequence[Run], markdown: bool) -> str:
    """The report of one or more runs: a table per run, flavor and device, then what moved."""
    labels = run_labels(runs)
    sources = [f"`{label}` (torch {', '.join(run.torch_versions)})" for label, run in zip(labels, runs)]
    intro = [("Input: " if len(runs) == 1 else "Runs, in order: ") + "; ".join(sources) + ".",
             definitions("time", *MIB_COLUMNS, "flops", *BEYOND_NONE_COLUMNS, "frontier", "figures", "kernel")]
    tables = [group_table(g, prefix=f"{label}: " if len(runs) > 1 else "")
              for label, run in zip(labels, runs) for g in run_groups(run)]
    if len(runs) > 1:
        tables.append(moves_table(runs))
    return render("Activation checkpointing: time, memory and recompute per variant", intro, tables, markdown)


# --- sweeps ----------------------------------------------------------------------------------


def sweep_overheads(points: Sequence[SweepPoint]) -> dict[tuple[str, int], float | None]:
    """Measured FLOP overhead per (variant, seq_len), where `none` with the same attention was
    measured at that length too."""
    flops = {(p.variant, p.seq_len): p.record.flops for p in points if p.record is not None}
    result = {}
    for p in points:
        none = flops.get((variant_id("none", parse_variant(p.variant)[1]), p.seq_len))
        result[(p.variant, p.seq_len)] = flop_overhead(p.record.flops, none) if p.record and none else None
    return result


def sweep_title(flavor: str, device: str, estimated: bool) -> str:
    return f"{flavor} on {device}" + (f" ({ESTIMATE_LABEL})" if estimated else "")


def sweep_table(points: Sequence[SweepPoint], title: str) -> Table:
    """Each variant at each sequence length, the analytic kept bytes beside the measured ones."""
    overheads = sweep_overheads(points)
    rows = []
    for p in sorted(points, key=lambda p: (variant_order(p.variant), p.seq_len)):
        figures = (("OOM",) + ("",) * (len(SWEEP_MIB_COLUMNS) - 1) if p.record is None
                   else tuple(mib(getattr(p.record, MIB_COLUMNS[h])) for h in SWEEP_MIB_COLUMNS))
        rows.append((p.variant, str(p.seq_len), *figures, mib(p.predicted_saved_bytes),
                     pct(overheads[(p.variant, p.seq_len)]),
                     NULL if p.predicted_flop_overhead is None else pct(p.predicted_flop_overhead)))
    notes = ("analytic: ac_bench/analytic's prediction for the same shape (kept: `forward_kept_bytes`; "
             f"{NULL}: the family declares no analytic model). OOM: the step ran out of device memory.",
             *null_notes([p.record for p in points if p.record is not None], SWEEP_MIB_COLUMNS))
    return Table(f"Sweep: {title}", ("variant", "seq len", *SWEEP_MIB_COLUMNS, "kept MiB (analytic)",
                                     "FLOP overhead", "FLOP overhead (analytic)"),
                 tuple(rows), notes=notes)


def budget_table(fits: Sequence[BudgetFit], points: Sequence[SweepPoint], budget_gib: float, title: str) -> Table:
    """Per variant, the longest swept sequence length whose whole step fits the budget."""
    overheads = sweep_overheads(points)
    longest = max(p.seq_len for p in points)

    def overhead(p: SweepPoint) -> float | None:  # the analytic one, else (no analytic model) the measured one
        return p.predicted_flop_overhead if p.predicted_flop_overhead is not None else overheads[(p.variant, p.seq_len)]
    # Longer is better, so the length enters the frontier negated; a point of no known overhead stays off it.
    front = pareto_front({f.variant: (-f.point.seq_len, overhead(f.point))
                          if f.point and overhead(f.point) is not None else None for f in fits})

    def sort_key(f: BudgetFit) -> tuple:
        return (0, -f.point.seq_len, overhead(f.point) or 0.0) if f.point else (1, 0, 0.0)

    rows = []
    for f in sorted(fits, key=sort_key):
        p = f.point
        if p is None:
            rows.append((f.variant, "none fits", "", "", "", ""))
            continue
        rows.append((f.variant, (">= " if f.open_ended else "") + str(p.seq_len), mib(p.record.peak_bytes),
                     pct(overheads[(p.variant, p.seq_len)]), pct(p.predicted_flop_overhead),
                     "yes" if f.variant in front else ""))
    notes = (f"Longest swept sequence length before the first that does not fit {budget_gib:g} GiB "
             f"(= {budget_gib * GIB / MIB:,.1f} MiB) of whole-step peak (parameters, gradients and optimizer "
             f"state included; on CUDA, allocated bytes: the CUDA context and allocator fragmentation come on "
             f"top). '>= N': even the longest swept length ({longest}) fits. Frontier: no other variant fits "
             f"a length at least as long at a FLOP overhead (analytic; measured for a family without an analytic "
             f"model) at least as low, and is better in one.",)
    return Table(f"Memory budget {budget_gib:g} GiB: {title}",
                 ("variant", "longest seq len", "peak MiB", "FLOP overhead", "FLOP overhead (analytic)",
                  "frontier"),
                 tuple(rows), notes=notes)
