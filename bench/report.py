"""The report users read: per flavor and device, each variant's step time, memory and
recompute cost with the Pareto frontier marked, as text, Markdown and a PNG plot; and
sequence-length sweeps with a memory-budget table.

    python -m bench.report table RUN.json [AFTER.json ...] [--markdown FILE] [--plot FILE]
    python -m bench.report sweep [--flavor seed] [--seq-lens ...] [--budget-gib N] [...]

Input files are written by ``pytest bench/ --benchmark-json FILE``: their ``measurements``
are ``bench.record.Measurement`` records; ``test_training_step`` benchmarks add the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from bench.memory import FAKE_MEMTRACKER
from bench.record import device_key, is_estimate
from bench.sweep import DEFAULT_SEQ_LENS, BudgetFit, SweepPoint, budget_fits, run_sweep
from models import ATTENTIONS, FLAVORS, STRATEGIES, VARIANTS, get_flavor, parse_variant, variant_id

MIB = 2 ** 20
GIB = 2 ** 30
#: The memory method of figures estimated on fake tensors (``seed`` on the CPU).
ESTIMATE_METHOD = FAKE_MEMTRACKER
#: The benchmark whose median is a variant's step time (bench/test_speed.py).
TIMED_TEST = "test_training_step"
#: Speed axes of the frontier: median step time when every variant is timed, else recompute.
TIME, FLOPS = "time", "flops"
PNG_DPI = 100


class ReportInputError(Exception):
    """Input the report cannot use; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------------------------
# Reading runs


@dataclass(frozen=True)
class Entry:
    """The figures of one measurement record that the report reads, and the variant's median
    step time where it was timed."""

    variant: str
    strategy: str
    attention: str
    flavor: str
    device: str
    device_key: str
    seq_len: int
    torch_version: str
    memory_method: str
    peak_bytes: int
    activation_peak_bytes: int
    saved_bytes: int
    flops: int
    median_s: float | None = None

    @property
    def estimated(self) -> bool:
        return self.memory_method == ESTIMATE_METHOD


#: The record fields the report needs, with their types (all are ``Measurement`` fields).
REQUIRED_FIELDS: dict[str, type] = {f.name: (int if f.type == "int" else str)
                                    for f in fields(Entry) if f.name != "median_s"}


@dataclass(frozen=True)
class Run:
    """One input file and its entries, in file order."""

    path: Path
    entries: tuple[Entry, ...]

    @property
    def torch_versions(self) -> list[str]:
        return sorted({e.torch_version for e in self.entries})


def _valid(value: object, kind: type) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _check_records(path: Path, records: object) -> list[dict]:
    """The ``measurements`` list, or a ReportInputError saying what is missing from it."""
    if not isinstance(records, list):
        raise ReportInputError(f"{path}: 'measurements' is not a list of records")
    if not records:
        raise ReportInputError(f"{path}: 'measurements' is empty: the run measured no variant")
    not_objects = sum(not isinstance(r, dict) for r in records)
    if not_objects:
        raise ReportInputError(f"{path}: {not_objects} of {len(records)} entries of 'measurements' "
                               f"are not records")
    missing = sorted({f for r in records for f in REQUIRED_FIELDS if f not in r})
    if missing:
        lacking = sum(any(f not in r for f in REQUIRED_FIELDS) for r in records)
        raise ReportInputError(f"{path}: {lacking} of {len(records)} measurement records lack required "
                               f"fields: {', '.join(missing)}")
    bad = sorted({f for r in records for f, kind in REQUIRED_FIELDS.items() if not _valid(r[f], kind)})
    if bad:
        raise ReportInputError(f"{path}: measurement records have fields of the wrong type: "
                               + ", ".join(f"{f} (expected {REQUIRED_FIELDS[f].__name__})" for f in bad))
    return records


def _medians(path: Path, benchmarks: object) -> dict[tuple[str, str, str], float]:
    """Median seconds of each timed step, keyed by (flavor, device, variant)."""
    if benchmarks is None:
        return {}
    if not isinstance(benchmarks, list):
        raise ReportInputError(f"{path}: 'benchmarks' is not a list")
    medians = {}
    for bench in benchmarks:
        name = bench.get("name", "") if isinstance(bench, dict) else ""
        if not name.startswith(TIMED_TEST + "["):
            continue
        info, stats = (bench.get(k) if isinstance(bench.get(k), dict) else {} for k in ("extra_info", "stats"))
        key = tuple(info.get(f) for f in ("flavor", "device", "variant"))
        median = stats.get("median")
        if None in key or not _valid(median, (int, float)):
            raise ReportInputError(f"{path}: benchmark {name} lacks extra_info flavor/device/variant or "
                                   f"stats.median")
        medians[key] = float(median)
    return medians


def load_run(path: str | Path) -> Run:
    """Read one ``--benchmark-json`` file of this suite; bad input raises ReportInputError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path}: not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict) or "measurements" not in data:
        raise ReportInputError(f"{path}: not written by this suite's `pytest bench/ --benchmark-json`: "
                               f"no 'measurements' list of records")
    records = _check_records(path, data["measurements"])
    medians = _medians(path, data.get("benchmarks"))
    entries = []
    seen = set()
    for r in records:
        key = (r["flavor"], r["device"], r["variant"])
        if key in seen:
            raise ReportInputError(f"{path}: two measurement records of {r['flavor']} {r['variant']} "
                                   f"on {r['device']}")
        seen.add(key)
        entries.append(Entry(**{f: r[f] for f in REQUIRED_FIELDS}, median_s=medians.get(key)))
    return Run(path, tuple(entries))


# ---------------------------------------------------------------------------------------------
# Figures derived from the records: ratios to `none`, the Pareto frontier


def flop_overhead(flops: int, none_flops: int) -> float:
    """Recompute cost: flops / flops of `none` with the same attention - 1."""
    return flops / none_flops - 1


def pareto_front(costs: Mapping[str, tuple[float, float] | None]) -> set[str]:
    """The names no other name dominates, both costs lower-is-better.

    A dominates B when A is no worse on both costs and strictly better on one: a tie on one
    cost is decided by the other, and exact ties on both leave both on the frontier. A name
    without costs (None) is neither on the frontier nor dominates another.
    """
    known = {name: c for name, c in costs.items() if c is not None}

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] <= b[0] and a[1] <= b[1] and a != b

    return {name for name, c in known.items() if not any(dominates(o, c) for o in known.values())}


@dataclass(frozen=True)
class Row:
    """One variant of a group, with the figures relative to `none` with the same attention."""

    entry: Entry
    time_ratio: float | None
    flop_overhead: float | None
    on_frontier: bool

    def speed(self, axis: str) -> float | None:
        """The frontier's speed figure: median seconds (``TIME``) or FLOP overhead (``FLOPS``)."""
        return self.entry.median_s if axis == TIME else self.flop_overhead

    def plot_point(self, axis: str) -> tuple[float, float] | None:
        """(peak MiB, median ms or FLOP overhead %) as plotted; None without a speed figure."""
        speed = self.speed(axis)
        return None if speed is None else (self.entry.peak_bytes / MIB, speed * (1e3 if axis == TIME else 100))


@dataclass(frozen=True)
class Group:
    """One flavor on one device key: every variant measured, in registry order."""

    flavor: str
    device_key: str
    axis: str
    rows: tuple[Row, ...]

    @property
    def key(self) -> tuple[str, str]:
        return self.flavor, self.device_key

    @property
    def title(self) -> str:
        return f"{self.flavor} on {self.device_key}"

    @property
    def estimated(self) -> bool:
        return any(r.entry.estimated for r in self.rows)


def speed_axis(entries: Iterable[Entry]) -> str:
    """``TIME`` when every entry is timed, else ``FLOPS``: a frontier never mixes the two."""
    entries = list(entries)
    return TIME if entries and all(e.median_s is not None for e in entries) else FLOPS


def _order(name: str, known: Sequence[str]) -> tuple[int, str]:
    """Registry order first (names are the interface), then unknown names alphabetically."""
    return (known.index(name) if name in known else len(known), name)


def _group_order(key: tuple[str, str]) -> tuple:
    """(flavor, device key): flavors in registry order, then device keys alphabetically."""
    return (*_order(key[0], list(FLAVORS)), key[1])


def make_group(entries: Sequence[Entry], axis: str | None = None) -> Group:
    """Rows of one flavor and device key; ``axis`` forces the frontier's speed axis."""
    axis = axis or speed_axis(entries)
    by_variant = {e.variant: e for e in entries}
    partial = []
    for e in sorted(entries, key=lambda e: _order(e.variant, VARIANTS)):
        none = by_variant.get(variant_id("none", e.attention)) if e.attention in ATTENTIONS else None
        ratio = e.median_s / none.median_s if none and e.median_s is not None and none.median_s else None
        overhead = flop_overhead(e.flops, none.flops) if none and none.flops else None
        partial.append(Row(e, ratio, overhead, on_frontier=False))
    front = pareto_front({r.entry.variant: (None if r.speed(axis) is None else (r.speed(axis), r.entry.peak_bytes))
                          for r in partial})
    rows = tuple(Row(r.entry, r.time_ratio, r.flop_overhead, r.entry.variant in front) for r in partial)
    first = entries[0]
    return Group(first.flavor, first.device_key, axis, rows)


def group_entries(entries: Iterable[Entry]) -> dict[tuple[str, str], list[Entry]]:
    """Entries by (flavor, device key), flavors in registry order."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        groups.setdefault((e.flavor, e.device_key), []).append(e)
    return {k: groups[k] for k in sorted(groups, key=_group_order)}


def run_groups(run: Run, axes: Mapping[tuple[str, str], str] | None = None) -> list[Group]:
    """The run's groups; ``axes`` forces a speed axis per group key (for plots of several runs)."""
    return [make_group(es, (axes or {}).get(key)) for key, es in group_entries(run.entries).items()]


def joint_axes(runs: Sequence[Run]) -> dict[tuple[str, str], str]:
    """Per group key, the speed axis that every run can be plotted on."""
    together: dict[tuple[str, str], list[Entry]] = {}
    for run in runs:
        for key, es in group_entries(run.entries).items():
            together.setdefault(key, []).extend(es)
    return {key: speed_axis(es) for key, es in together.items()}


@dataclass(frozen=True)
class Move:
    """A variant whose plotted point moved from one run to the next."""

    flavor: str
    device_key: str
    variant: str
    start: tuple[float, float]
    end: tuple[float, float]


def run_moves(runs: Sequence[Run]) -> list[Move]:
    """Points that moved between consecutive runs (before -> after), on the joint axes."""
    axes = joint_axes(runs)
    groups = [{g.key: g for g in run_groups(run, axes)} for run in runs]
    moves = []
    for before, after in zip(groups, groups[1:]):
        for key in before.keys() & after.keys():
            old = {r.entry.variant: r.plot_point(axes[key]) for r in before[key].rows}
            for row in after[key].rows:
                start, end = old.get(row.entry.variant), row.plot_point(axes[key])
                if start is not None and end is not None and start != end:
                    moves.append(Move(*key, row.entry.variant, start, end))
    return sorted(moves, key=lambda m: (*_group_order((m.flavor, m.device_key)), _order(m.variant, VARIANTS)))


# ---------------------------------------------------------------------------------------------
# Tables: one set of formatted cells, rendered as text or Markdown


@dataclass(frozen=True)
class Table:
    """A titled table of formatted cells; the first ``left`` columns are names, the rest figures."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()
    left: int = 1

    def _aligned(self, cells: Sequence[str], widths: Sequence[int]) -> str:
        return "  ".join(c.ljust(w) if i < self.left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    def text(self) -> str:
        widths = [max(len(c) for c in column) for column in zip(self.header, *self.rows)]
        lines = [self.title, *self.notes, self._aligned(self.header, widths),
                 self._aligned(["-" * w for w in widths], widths)]
        return "\n".join(lines + [self._aligned(r, widths) for r in self.rows])

    def markdown(self) -> str:
        rule = ["---" if i < self.left else "--:" for i in range(len(self.header))]
        lines = [f"## {self.title}", ""] + ([*self.notes, ""] if self.notes else [])
        lines += ["| " + " | ".join(cells) + " |" for cells in (self.header, rule, *self.rows)]
        return "\n".join(lines)


def render(title: str, intro: Sequence[str], tables: Sequence[Table], markdown: bool) -> str:
    """A whole document: title, introductory paragraphs, tables."""
    if markdown:
        return "\n\n".join([f"# {title}", *intro, *(t.markdown() for t in tables)]) + "\n"
    return "\n\n".join([title, *intro, *(t.text() for t in tables)]) + "\n"


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f}"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:+.1f}%"


def _maybe(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


ESTIMATE_LABEL = "estimate: fake tensors, no compute, not timed"

#: The bullets that say what each column means; a document lists those its tables use.
DEFINITIONS: dict[str, str] = {
    "time": "- step ms: median of `test_training_step` (zero_grad, forward, backward, AdamW step); x none: "
            "that median over the median of `none` with the same attention; blank where not timed.",
    "memory": "- peak: the whole step's peak (parameters, gradients, optimizer state included); act. peak: "
              "the forward+backward peak above what was allocated before the forward; saved: bytes saved "
              "for backward at the end of the forward. MiB = 2^20 bytes.",
    "flops": "- FLOP overhead: flops / flops of `none` with the same attention - 1, the recomputation.",
    "frontier": "- frontier: no other variant is at least as fast and at least as small (peak) and strictly "
                "better in one; exact ties on both stay on the frontier. Faster: lower median step time when "
                "every variant of the table is timed, else lower FLOP overhead.",
    "estimate": f"- estimate: memory method `{ESTIMATE_METHOD}`, the step traced on fake tensors: exact bytes "
                "and FLOPs as PyTorch allocates them on the CPU, no compute, no timing.",
}


def definitions(*names: str) -> str:
    return "\n".join(DEFINITIONS[n] for n in names)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """File names, or the paths as given where two runs share a name."""
    names = [r.path.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]


def group_table(group: Group, prefix: str = "") -> Table:
    """One flavor on one device: a row per variant."""
    rows = tuple((
        r.entry.variant,
        _maybe(None if r.entry.median_s is None else r.entry.median_s * 1e3, ".1f"),
        _maybe(r.time_ratio, ".2f"),
        _mib(r.entry.peak_bytes), _mib(r.entry.activation_peak_bytes), _mib(r.entry.saved_bytes),
        _pct(r.flop_overhead),
        "yes" if r.on_frontier else "",
        "estimate" if r.entry.estimated else "measured",
    ) for r in group.rows)
    title = prefix + group.title + (f" ({ESTIMATE_LABEL})" if group.estimated else "")
    timed = any(r.entry.median_s is not None for r in group.rows)
    axis = ("median step time" if group.axis == TIME
            else f"FLOP overhead ({'not every variant is' if timed else 'not'} timed)")
    return Table(title, ("variant", "step ms", "x none", "peak MiB", "act. peak MiB", "saved MiB",
                         "FLOP overhead", "frontier", "figures"), rows, notes=(f"Frontier on {axis} and peak.",))


def _speed_text(value: float, axis: str) -> str:
    return f"{value:.1f} ms" if axis == TIME else f"{value:+.1f}%"


def moves_table(runs: Sequence[Run]) -> Table:
    """The points that moved between consecutive runs, as the plot's arrows show them."""
    axes = joint_axes(runs)
    rows = tuple((f"{m.flavor} on {m.device_key}", m.variant,
                  f"{m.start[0]:,.1f} -> {m.end[0]:,.1f}",
                  f"{_speed_text(m.start[1], axes[(m.flavor, m.device_key)])} -> "
                  f"{_speed_text(m.end[1], axes[(m.flavor, m.device_key)])}")
                 for m in run_moves(runs))
    return Table("Moved between runs", ("group", "variant", "peak MiB", "time or FLOP overhead"), rows,
                 notes=("Speed as plotted: median step time where both runs are timed, else FLOP overhead.",),
                 left=2)


def report_text(runs: Sequence[Run], markdown: bool) -> str:
    """The report of one or more runs: a table per run, flavor and device, then what moved."""
    labels = run_labels(runs)
    sources = [f"`{label}` (torch {', '.join(run.torch_versions)})" for label, run in zip(labels, runs)]
    intro = [("Input: " if len(runs) == 1 else "Runs, in order: ") + "; ".join(sources) + ".",
             definitions("time", "memory", "flops", "frontier", "estimate")]
    tables = [group_table(g, prefix=f"{label}: " if len(runs) > 1 else "")
              for label, run in zip(labels, runs) for g in run_groups(run)]
    if len(runs) > 1:
        tables.append(moves_table(runs))
    return render("Activation checkpointing: time, memory and recompute per variant", intro, tables, markdown)


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on the Agg canvas: no pyplot, no global state)

ATTENTION_MARKERS = {"eager": "o", "sdpa": "s"}
SPEED_LABELS = {TIME: "median step time (ms)", FLOPS: "FLOP overhead vs none, same attention (%)"}


def _color(strategy: str) -> str:
    names = list(STRATEGIES)
    return f"C{names.index(strategy) if strategy in names else len(names)}"


def _new_figure(n_panels: int, height: float = 5.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(6.4 * n_panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, n_panels, squeeze=False)[0])


def save_png(fig: Figure, path: str | Path) -> None:
    """Write a PNG without the Software/date metadata, so the same figure gives the same bytes."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=PNG_DPI, metadata={"Software": None})


def _draw_group(ax, group: Group, latest: bool) -> None:
    """One run's points and frontier; the latest run filled and labelled, earlier ones hollow."""
    points = {r.entry.variant: (r, r.plot_point(group.axis)) for r in group.rows}
    for variant, (row, xy) in points.items():
        if xy is None:
            continue
        color = _color(row.entry.strategy)
        ax.plot(*xy, marker=ATTENTION_MARKERS.get(row.entry.attention, "^"), markersize=7, linestyle="",
                color=color, markerfacecolor=color if latest else "none", alpha=1.0 if latest else 0.6)
        if latest:
            ax.annotate(variant, xy, xytext=(5, 4), textcoords="offset points", fontsize=8)
    front = sorted(xy for row, xy in points.values() if row.on_frontier and xy is not None)
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="black" if latest else "0.6", linestyle="-" if latest else "--",
                linewidth=1, zorder=0)


def report_figure(runs: Sequence[Run]) -> Figure:
    """Peak memory against time (or FLOP overhead) per variant, a panel per flavor and device;
    every run drawn, frontiers stepped, arrows from each run's point to the next run's."""
    axes_by_key = joint_axes(runs)
    keys = sorted(axes_by_key, key=_group_order)
    fig, panels = _new_figure(len(keys))
    moves = run_moves(runs)
    labels = run_labels(runs)
    groups = [{g.key: g for g in run_groups(run, axes_by_key)} for run in runs]
    for ax, key in zip(panels, keys):
        estimated = False
        for i, by_key in enumerate(groups):
            if key in by_key:
                _draw_group(ax, by_key[key], latest=i == len(runs) - 1)
                estimated |= by_key[key].estimated
        for m in (m for m in moves if (m.flavor, m.device_key) == key):
            ax.annotate("", xy=m.end, xytext=m.start,
                        arrowprops=dict(arrowstyle="->", color="0.35", shrinkA=4, shrinkB=4))
        ax.set_xlabel("peak memory of the step (MiB)")
        ax.set_ylabel(SPEED_LABELS[axes_by_key[key]])
        ax.set_title(f"{key[0]} on {key[1]}" + (f"\n({ESTIMATE_LABEL})" if estimated else ""), fontsize=10)
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color="black" if i == len(runs) - 1 else "0.6",
                      linestyle="-" if i == len(runs) - 1 else "--", label=f"frontier: {label}")
               for i, label in enumerate(labels)]
    handles += [Line2D([], [], color="0.3", marker=m, linestyle="", label=a) for a, m in ATTENTION_MARKERS.items()]
    if len(runs) > 1:
        handles.append(Line2D([], [], color="0.35", marker=">", label="moved (earlier -> later run)"))
    panels[0].legend(handles=handles, fontsize=8, loc="best")
    return fig


def arrow_segments(fig: Figure) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """(start, end) of every arrow drawn on the figure's panels."""
    return [(tuple(t.xyann), tuple(t.xy)) for ax in fig.axes for t in ax.texts
            if getattr(t, "arrow_patch", None) is not None]


# ---------------------------------------------------------------------------------------------
# Sweeps


def sweep_overheads(points: Sequence[SweepPoint]) -> dict[tuple[str, int], float | None]:
    """Measured FLOP overhead per (variant, seq_len), where `none` with the same attention was
    measured at that length too."""
    flops = {(p.variant, p.seq_len): p.record.flops for p in points if p.record is not None}
    result = {}
    for p in points:
        none = flops.get((variant_id("none", parse_variant(p.variant)[1]), p.seq_len))
        result[(p.variant, p.seq_len)] = flop_overhead(p.record.flops, none) if p.record and none else None
    return result


def _sweep_title(flavor: str, device: str, estimated: bool) -> str:
    return f"{flavor} on {device}" + (f" ({ESTIMATE_LABEL})" if estimated else "")


def sweep_table(points: Sequence[SweepPoint], title: str) -> Table:
    """Each variant at each sequence length, the analytic saved_bytes beside the measured one."""
    overheads = sweep_overheads(points)
    rows = []
    for p in sorted(points, key=lambda p: (_order(p.variant, VARIANTS), p.seq_len)):
        r = p.record
        figures = ("OOM", "", "") if r is None else (_mib(r.peak_bytes), _mib(r.activation_peak_bytes),
                                                    _mib(r.saved_bytes))
        rows.append((p.variant, str(p.seq_len), *figures, _mib(p.predicted_saved_bytes),
                     _pct(overheads[(p.variant, p.seq_len)]), _pct(p.predicted_flop_overhead)))
    return Table(f"Sweep: {title}", ("variant", "seq len", "peak MiB", "act. peak MiB", "saved MiB",
                                     "saved MiB (analytic)", "FLOP overhead", "FLOP overhead (analytic)"),
                 tuple(rows), notes=("analytic: bench/analytic.py's prediction for the same shape. "
                                     "OOM: the step ran out of device memory.",))


def budget_table(fits: Sequence[BudgetFit], points: Sequence[SweepPoint], budget_gib: float, title: str) -> Table:
    """Per variant, the longest swept sequence length whose whole step fits the budget."""
    overheads = sweep_overheads(points)
    longest = max(p.seq_len for p in points)
    # Longer is better, so the length enters the frontier negated.
    front = pareto_front({f.variant: (-f.point.seq_len, f.point.predicted_flop_overhead) if f.point else None
                          for f in fits})

    def sort_key(f: BudgetFit) -> tuple:
        return (0, -f.point.seq_len, f.point.predicted_flop_overhead) if f.point else (1, 0, 0.0)

    rows = []
    for f in sorted(fits, key=sort_key):
        p = f.point
        if p is None:
            rows.append((f.variant, "none fits", "", "", "", ""))
            continue
        rows.append((f.variant, (">= " if f.open_ended else "") + str(p.seq_len), _mib(p.record.peak_bytes),
                     _pct(overheads[(p.variant, p.seq_len)]), _pct(p.predicted_flop_overhead),
                     "yes" if f.variant in front else ""))
    notes = (f"Longest swept sequence length before the first that does not fit {budget_gib:g} GiB "
             f"(= {budget_gib * GIB / MIB:,.0f} MiB) of whole-step peak (parameters, gradients and optimizer "
             f"state included; on CUDA, allocated bytes: the CUDA context and allocator fragmentation come on "
             f"top). '>= N': even the longest swept length ({longest}) fits. Frontier: no other variant fits "
             f"a length at least as long at a FLOP overhead (analytic) at least as low, and is better in one.",)
    return Table(f"Memory budget {budget_gib:g} GiB: {title}",
                 ("variant", "longest seq len", "peak MiB", "FLOP overhead", "FLOP overhead (analytic)",
                  "frontier"),
                 tuple(rows), notes=notes)


def sweep_figure(points: Sequence[SweepPoint], title: str, budget_gib: float | None = None) -> Figure:
    """Log-log memory against sequence length per variant: activation peak, saved bytes (with
    the analytic prediction), and the whole step's peak against the budget."""
    fig, (act, saved, peak) = _new_figure(3, height=5.2)
    by_variant: dict[str, list[SweepPoint]] = {}
    for p in sorted(points, key=lambda p: p.seq_len):
        by_variant.setdefault(p.variant, []).append(p)
    for variant in sorted(by_variant, key=lambda v: _order(v, VARIANTS)):
        strategy, attention = parse_variant(variant)
        style = dict(color=_color(strategy), linestyle="-" if attention == "eager" else "--",
                     marker=ATTENTION_MARKERS.get(attention, "^"), markersize=4, label=variant)
        done = [p for p in by_variant[variant] if p.record is not None]
        seqs = [p.seq_len for p in done]
        for ax, field in ((act, "activation_peak_bytes"), (saved, "saved_bytes"), (peak, "peak_bytes")):
            ax.plot(seqs, [getattr(p.record, field) / MIB for p in done], **style)
        every = by_variant[variant]  # the prediction needs no measurement: OOM points too
        saved.plot([p.seq_len for p in every], [p.predicted_saved_bytes / MIB for p in every],
                   linestyle="", marker="x", color="black", markersize=5)
    seq_lens = sorted({p.seq_len for p in points})
    for ax in (act, saved):  # slope guides, starting below the lowest curve at the shortest length
        lines = [line for line in ax.get_lines() if len(line.get_xdata())]
        if lines and len(seq_lens) > 1:
            s0, s1 = seq_lens[0], seq_lens[-1]
            y0 = min(y for line in lines for x, y in zip(line.get_xdata(), line.get_ydata()) if x == s0) / 2
            for power, dash in ((1, ":"), (2, "-.")):
                ax.plot([s0, s1], [y0, y0 * (s1 / s0) ** power], color="0.3", linestyle=dash, linewidth=1.2,
                        label=f"slope {power}: memory ~ seq^{power}")
    if budget_gib is not None:
        peak.axhline(budget_gib * GIB / MIB, color="red", linewidth=1, label=f"budget {budget_gib:g} GiB")
    saved.plot([], [], linestyle="", marker="x", color="black", label="analytic prediction")
    for ax, name in ((act, "activation peak (MiB)"), (saved, "saved for backward (MiB)"),
                     (peak, "whole-step peak (MiB)")):
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel=name)
        ax.set_xticks(seq_lens, [str(s) for s in seq_lens], fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="both", alpha=0.3)
    act.legend(fontsize=7, ncols=2)
    guides = [line for line in saved.get_lines() if line.get_label().startswith(("slope", "analytic"))]
    saved.legend(handles=guides, fontsize=7)
    peak.legend(handles=[line for line in peak.get_lines() if line.get_label().startswith("budget")], fontsize=7)
    fig.suptitle(f"Memory against sequence length: {title}", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# Command line


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seq_lens(text: str) -> list[int]:
    try:
        values = [int(part) for part in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sequence lengths, got {text!r}")
    return values


def _variants(text: str) -> list[str]:
    variants = _comma_list(text)
    try:
        for variant in variants:
            parse_variant(variant)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return variants or list(VARIANTS)


def _flavor(text: str):
    try:
        return get_flavor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _jobs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes, got {text!r}")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of GiB, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="The activation-checkpointing report: per flavor and device, each variant's median step "
                    "time and its ratio to `none` with the same attention, peak / activation-peak / saved "
                    "memory, FLOP overhead, and the Pareto frontier (no other variant both at least as fast "
                    "and at least as small, and better in one); and sequence-length sweeps.",
        epilog="Input files come from `pytest bench/ --benchmark-json FILE`. Unreadable input (a missing "
               "file, not JSON, not this suite's output, records lacking fields) is reported on one line "
               "on stderr with exit status 2. `python -m bench.report FILE...` means `table FILE...`.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{table,sweep}")

    table = sub.add_parser(
        "table", help="tables and a plot from one or more --benchmark-json files",
        description="Print a table per run, flavor and device. Timed figures come from the "
                    "test_training_step benchmarks, matched to the records by variant, flavor and device; "
                    "figures estimated on fake tensors (memory method fake-memtracker, e.g. seed on the CPU) "
                    "are labelled as estimates and are not timed. The frontier uses the median step time when "
                    "every variant of the table is timed, else the FLOP overhead. With several files (e.g. "
                    "before and after: two nights, two torch versions) each gets its tables, then the "
                    "variants that moved are listed, and the plot connects each moved point to the next run's.")
    table.add_argument("runs", nargs="+", metavar="RUN.json", type=Path,
                       help="pytest-benchmark JSON files of this suite, earliest first")
    table.add_argument("--flavor", type=_comma_list, default=None, metavar="NAMES",
                       help="comma-separated flavors to report (default: every flavor in the files)")
    table.add_argument("--markdown", type=Path, metavar="FILE", help="also write the report as Markdown")
    table.add_argument("--plot", type=Path, metavar="FILE",
                       help="write a PNG: peak memory (x) against median step time or FLOP overhead (y), "
                            "one labelled point per variant, frontier stepped; a panel per flavor and device")

    sweep = sub.add_parser(
        "sweep", help="activation memory of each variant over sequence lengths, and a memory-budget table",
        description="Measure each variant with bench.record.measure_variant on the flavor at each sequence "
                    "length: on the CPU an estimated flavor (seed) runs on fake tensors (about 2-3 s a point "
                    "whatever the length, points measured in parallel: the default "
                    f"{len(DEFAULT_SEQ_LENS) * len(VARIANTS)} points take under 2 minutes on 2 cores), on CUDA the "
                    "step is run and an out-of-memory step is recorded as OOM. Prints activation_peak_bytes and saved_bytes "
                    "beside bench.analytic's saved_bytes prediction, and the FLOP overhead measured (where "
                    "`none` with the same attention is in --variants) and predicted.")
    sweep.add_argument("--flavor", type=_flavor, default=get_flavor("seed"), metavar="NAME",
                       help=f"flavor to sweep, from: {', '.join(FLAVORS)} (default: seed)")
    sweep.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="device to measure on (default: cuda when available, else cpu)")
    sweep.add_argument("--seq-lens", type=_seq_lens, default=list(DEFAULT_SEQ_LENS), metavar="N,N,...",
                       help=f"sequence lengths (default: {','.join(map(str, DEFAULT_SEQ_LENS))})")
    sweep.add_argument("--variants", type=_variants, default=list(VARIANTS), metavar="V,V,...",
                       help=f"variants to sweep, e.g. none-eager,full-sdpa (default: all {len(VARIANTS)})")
    sweep.add_argument("--budget-gib", type=_positive, default=None, metavar="N",
                       help="also table, per variant, the longest swept sequence length before the first "
                            "whose whole-step peak (parameters, gradients, optimizer state included) exceeds "
                            "N GiB or runs out of memory, with its FLOP overhead; the answer is as fine as "
                            "--seq-lens (no bisection), and '>= N' says even the longest swept length fits")
    sweep.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                       help="worker processes measuring points in parallel on the CPU (default: one per CPU "
                            "core; results do not depend on it); on CUDA points run one at a time")
    sweep.add_argument("--markdown", type=Path, metavar="FILE", help="also write the tables as Markdown")
    sweep.add_argument("--plot", type=Path, metavar="FILE",
                       help="write a PNG: log-log memory against sequence length per variant (activation "
                            "peak; saved bytes with the analytic prediction; whole-step peak and the budget)")
    return parser


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _table_command(args: argparse.Namespace) -> None:
    runs = [load_run(path) for path in args.runs]
    if args.flavor:
        chosen = []
        for run in runs:
            entries = tuple(e for e in run.entries if e.flavor in args.flavor)
            if not entries:
                present = sorted({e.flavor for e in run.entries})
                raise ReportInputError(f"{run.path}: no records of flavor {', '.join(args.flavor)} "
                                       f"(it has: {', '.join(present)})")
            chosen.append(Run(run.path, entries))
        runs = chosen
    sys.stdout.write(report_text(runs, markdown=False))
    if args.markdown:
        _write(args.markdown, report_text(runs, markdown=True))
    if args.plot:
        save_png(report_figure(runs), args.plot)


def _sweep_command(args: argparse.Namespace) -> None:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ReportInputError("--device cuda: no CUDA device is available")
    flavor = args.flavor

    def progress(point: SweepPoint, seconds: float) -> None:
        print(f"  {flavor.name} seq {point.seq_len:>6} {point.variant:<18} "
              f"{'OOM' if point.oom else 'ok'} {seconds:5.1f} s", file=sys.stderr)

    jobs = 1 if device == "cuda" else args.jobs or os.cpu_count() or 1
    points = run_sweep(flavor, args.variants, args.seq_lens, device, progress=progress, jobs=jobs)
    estimated = is_estimate(flavor, device)
    title = _sweep_title(flavor.name, device_key(device), estimated)
    tables = [sweep_table(points, title)]
    if args.budget_gib is not None:
        fits = budget_fits(points, int(args.budget_gib * GIB))
        tables.insert(0, budget_table(fits, points, args.budget_gib, title))
    shape = (f"d_model {flavor.d_model}, {flavor.n_heads} heads, depth {flavor.depth}, batch {flavor.batch}, "
             f"{flavor.dtype}")
    lengths = ", ".join(map(str, sorted(set(args.seq_lens))))
    intro = [f"Flavor `{flavor.name}` ({shape}) at sequence lengths {lengths}; torch {torch.__version__}.",
             definitions("memory", "flops", *(["estimate"] if estimated else []))]
    heading = "Activation checkpointing: memory over sequence length"
    sys.stdout.write(render(heading, intro, tables, markdown=False))
    if args.markdown:
        _write(args.markdown, render(heading, intro, tables, markdown=True))
    if args.plot:
        save_png(sweep_figure(points, title, args.budget_gib), args.plot)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; bad input is one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in ("table", "sweep"):
        argv.insert(0, "table")
    args = build_parser().parse_args(argv)
    try:
        (_table_command if args.command == "table" else _sweep_command)(args)
    except ReportInputError as exc:
        print(f"bench.report: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:  # writing --markdown / --plot
        print(f"bench.report: error: {exc.filename}: cannot write: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
