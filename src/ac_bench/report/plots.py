"""Figures: peak memory against step time (or FLOP overhead) with the frontier, before/after
arrows between runs; memory against sequence length for sweeps. matplotlib's object API on
the Agg canvas: no pyplot, no global state."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from ac_bench.models import POLICIES
from ac_bench.report.frontier import (
    FLOPS,
    MIB,
    TIME,
    Group,
    group_order,
    joint_axes,
    policy_order,
    run_groups,
    run_moves,
    variant_order,
)
from ac_bench.report.load import Run
from ac_bench.report.tables import ESTIMATE_LABEL, GIB, run_labels
from ac_bench.sweep import SweepPoint

PNG_DPI = 100
ATTENTION_MARKERS = {"eager": "o", "sdpa": "s"}
SPEED_LABELS = {TIME: "median step time (ms)", FLOPS: "FLOP overhead vs none, same attention (%)"}


def policy_color(policy: str) -> tuple[float, float, float, float]:
    """A policy's colour: its place in ``models.POLICIES`` in tab10 (tab20 past ten policies);
    any other policy (every_4, sequential_2, ...) a fixed colour of tab20b picked by its name."""
    names = list(POLICIES)
    if policy in names:
        cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
        return cmap(names.index(policy) % cmap.N)
    cmap = matplotlib.colormaps["tab20b"]
    return cmap(zlib.crc32(policy.encode()) % cmap.N)  # crc32, not hash(): the same in every process


def _policy_attention(variant: str) -> tuple[str, str]:
    policy, _, attention = variant.rpartition("-")
    return policy, attention


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
    points = {r.variant: (r, r.plot_point(group.axis)) for r in group.rows}
    for variant, (row, xy) in points.items():
        if xy is None:
            continue
        color = policy_color(row.entry.record.policy)
        ax.plot(*xy, marker=ATTENTION_MARKERS.get(row.entry.record.attention, "^"), markersize=7, linestyle="",
                color=color, markerfacecolor=color if latest else "none", alpha=1.0 if latest else 0.6)
        if latest and row.on_frontier:  # the rest are told apart by colour (policy) and marker (attention)
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
    keys = sorted(axes_by_key, key=group_order)
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
    policies = sorted({e.record.policy for run in runs for e in run.entries}, key=policy_order)
    handles += [Line2D([], [], color=policy_color(p), marker="o", linestyle="", label=p) for p in policies]
    fig.legend(handles=handles, fontsize=8, loc="outside right upper")
    return fig


def arrow_segments(fig: Figure) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """(start, end) of every arrow drawn on the figure's panels."""
    return [(tuple(t.xyann), tuple(t.xy)) for ax in fig.axes for t in ax.texts
            if getattr(t, "arrow_patch", None) is not None]


def _slope_guides(ax, seq_lens: Sequence[int]) -> None:
    """Lines of slope 1 and 2, starting below the lowest curve at the shortest length."""
    s0, s1 = seq_lens[0], seq_lens[-1]
    lows = [y for line in ax.get_lines() for x, y in zip(line.get_xdata(), line.get_ydata()) if x == s0 and y > 0]
    if not lows or s0 == s1:
        return
    y0 = min(lows) / 2
    for power, dash in ((1, ":"), (2, "-.")):
        ax.plot([s0, s1], [y0, y0 * (s1 / s0) ** power], color="0.3", linestyle=dash, linewidth=1.2,
                label=f"slope {power}: memory ~ seq^{power}")


def sweep_figure(points: Sequence[SweepPoint], title: str, budget_gib: float | None = None) -> Figure:
    """Log-log memory against sequence length per variant: activation peak, bytes kept for
    backward (with the analytic prediction), and the whole step's peak against the budget."""
    fig, (act, kept, peak) = _new_figure(3, height=5.2)
    by_variant: dict[str, list[SweepPoint]] = {}
    for p in sorted(points, key=lambda p: p.seq_len):
        by_variant.setdefault(p.variant, []).append(p)
    for variant in sorted(by_variant, key=variant_order):
        policy, attention = _policy_attention(variant)
        style = dict(color=policy_color(policy), linestyle="-" if attention == "eager" else "--",
                     marker=ATTENTION_MARKERS.get(attention, "^"), markersize=4, label=variant)
        done = [p for p in by_variant[variant] if p.record is not None]
        seqs = [p.seq_len for p in done]
        for ax, field in ((act, "activation_peak_bytes"), (kept, "forward_kept_bytes"), (peak, "peak_bytes")):
            ax.plot(seqs, [getattr(p.record, field) / MIB for p in done], **style)
        # The prediction needs no measurement: OOM points too (none without an analytic model).
        every = [p for p in by_variant[variant] if p.predicted_saved_bytes is not None]
        kept.plot([p.seq_len for p in every], [p.predicted_saved_bytes / MIB for p in every],
                  linestyle="", marker="x", color="black", markersize=5)
    seq_lens = sorted({p.seq_len for p in points})
    for ax in (act, kept):
        _slope_guides(ax, seq_lens)
    if budget_gib is not None:
        peak.axhline(budget_gib * GIB / MIB, color="red", linewidth=1, label=f"budget {budget_gib:g} GiB")
    kept.plot([], [], linestyle="", marker="x", color="black", label="analytic prediction")
    for ax, name in ((act, "activation peak (MiB)"), (kept, "kept for backward (MiB)"),
                     (peak, "whole-step peak (MiB)")):
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel=name)
        ax.set_xticks(seq_lens, [str(s) for s in seq_lens], fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="both", alpha=0.3)
    act.legend(fontsize=7, ncols=2)
    guides = [line for line in kept.get_lines() if line.get_label().startswith(("slope", "analytic"))]
    kept.legend(handles=guides, fontsize=7)
    peak.legend(handles=[line for line in peak.get_lines() if line.get_label().startswith("budget")], fontsize=7)
    fig.suptitle(f"Memory against sequence length: {title}", fontsize=10)
    return fig
