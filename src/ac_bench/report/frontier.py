"""Figures derived from the records: FLOP overhead and step time relative to ``none`` with the
same attention, the Pareto frontier of a flavor on a device, and the points that moved
between runs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ac_bench.metrics import METRICS
from ac_bench.models import ATTENTIONS, FLAVORS, POLICIES, variant_id
from ac_bench.report.load import Entry, Run

MIB = 2 ** 20
#: Speed axes of the frontier: median step time when every variant is timed, else recompute.
TIME, FLOPS = "time", "flops"


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


# --- order: names are the interface, registries give the order ---------------------------------


def _natural(name: str) -> tuple:
    """``every_4`` before ``every_10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _order(name: str, known: Sequence[str]) -> tuple:
    """Registry order first, then unknown names in natural order."""
    return (known.index(name), ()) if name in known else (len(known), _natural(name))


def policy_order(policy: str) -> tuple:
    """Policies as ``models.POLICIES`` lists them, then parameterised ones (every_4, ...)."""
    return _order(policy, list(POLICIES))


def variant_order(variant: str) -> tuple:
    """Variants by policy (``policy_order``), then attention as ``models.ATTENTIONS`` lists them."""
    policy, _, attention = variant.rpartition("-")
    return (*policy_order(policy), *_order(attention, list(ATTENTIONS)))


def group_label(record) -> str:
    """What a group is named by: the flavor, or for one rank of a sharded run (FSDP2 over W
    ranks, ``ac_bench/distributed.py``) ``tiny FSDP2 W=2 rank 0``: each rank is its own group,
    since its figures are that rank's."""
    if record.world_size == 1:
        return record.flavor
    return f"{record.flavor} FSDP2 W={record.world_size} rank {record.rank}"


def group_order(key: tuple[str, str]) -> tuple:
    """(group label, device key): flavors in registry order (a sharded run's ranks after its
    flavor's single process), then device keys alphabetically."""
    return (*_order(key[0].split(" ")[0], list(FLAVORS)), _natural(key[0]), key[1])


# --- groups: one flavor on one device key --------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One variant of a group, with the figures relative to `none` with the same attention."""

    entry: Entry
    time_ratio: float | None
    flop_overhead: float | None
    on_frontier: bool
    #: Recompute time: median backward seconds minus `none`'s with the same attention (None: not timed by phase).
    recompute_s: float | None = None
    #: Per metric the report shows against `none` (``Metric.beyond_none``: the ops of backward and
    #: the bytes of its non-matmul ops), how much it exceeds `none`'s with the same attention: the
    #: recompute, elementwise ops included, that FLOPs do not count (None: no `none` or no figure).
    beyond_none: Mapping[str, int | None] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        return self.entry.record.variant

    def speed(self, axis: str) -> float | None:
        """The frontier's speed figure: median seconds (``TIME``) or FLOP overhead (``FLOPS``)."""
        return self.entry.median_s if axis == TIME else self.flop_overhead

    def plot_point(self, axis: str) -> tuple[float, float] | None:
        """(peak MiB, median ms or FLOP overhead %) as plotted; None without a speed figure."""
        speed = self.speed(axis)
        if speed is None or self.entry.record.peak_bytes is None:
            return None
        return self.entry.record.peak_bytes / MIB, speed * (1e3 if axis == TIME else 100)


@dataclass(frozen=True)
class Group:
    """One flavor on one device key (one rank of a sharded run: ``group_label``): every
    variant measured, in registry order."""

    #: The group label: the flavor, or ``tiny FSDP2 W=2 rank 0``.
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


def shares_cores(entry: Entry) -> bool:
    """A rank of a sharded launch on the CPU (gloo): its ``step_seconds`` are the wall time of three
    steps while the other ranks step on the same cores, each variant after the other, so load
    moves them by more than a policy's recompute (``docs/results.md``: the W=2 step times). They
    are shown in the table, and the frontier is drawn on FLOP overhead instead."""
    return entry.record.world_size > 1 and entry.record.device_key == "cpu"


def speed_axis(entries: Iterable[Entry]) -> str:
    """``TIME`` when every entry is timed (and none is a rank whose wall time ``shares_cores``),
    else ``FLOPS``: a frontier never mixes the two."""
    entries = list(entries)
    timed = entries and all(e.median_s is not None and not shares_cores(e) for e in entries)
    return TIME if timed else FLOPS


#: The metrics shown beside how much they exceed `none`'s (``Metric.beyond_none``), in registry order.
BEYOND_NONE: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.beyond_none)


def _beyond(value: int | None, none_value: int | None) -> int | None:
    return None if value is None or none_value is None else value - none_value


def make_group(entries: Sequence[Entry], axis: str | None = None) -> Group:
    """Rows of one flavor and device key; ``axis`` forces the frontier's speed axis."""
    axis = axis or speed_axis(entries)
    by_variant = {e.record.variant: e for e in entries}
    partial = []
    for e in sorted(entries, key=lambda e: variant_order(e.record.variant)):
        r = e.record
        none = by_variant.get(variant_id("none", r.attention)) if r.attention in ATTENTIONS else None
        ratio = (e.median_s / none.median_s if none and e.median_s is not None and none.median_s
                 and not shares_cores(e) else None)
        overhead = (flop_overhead(r.flops, none.record.flops)
                    if none and none.record.flops and r.flops is not None else None)
        recompute = (e.backward_s - none.backward_s if none and e.backward_s is not None and none.backward_s is not None
                     else None)
        beyond = {m: _beyond(getattr(r, m), getattr(none.record, m) if none else None) for m in BEYOND_NONE}
        partial.append(Row(e, ratio, overhead, on_frontier=False, recompute_s=recompute, beyond_none=beyond))
    # A variant without figures (out of memory) is neither on the frontier nor dominates one.
    front = pareto_front({r.variant: None if r.speed(axis) is None or r.entry.record.peak_bytes is None
                          else (r.speed(axis), r.entry.record.peak_bytes) for r in partial})
    rows = tuple(replace(r, on_frontier=r.variant in front) for r in partial)
    first = entries[0].record
    return Group(group_label(first), first.device_key, axis, rows)


def group_entries(entries: Iterable[Entry]) -> dict[tuple[str, str], list[Entry]]:
    """Entries by (group label, device key), flavors in registry order."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        groups.setdefault((group_label(e.record), e.record.device_key), []).append(e)
    return {k: groups[k] for k in sorted(groups, key=group_order)}


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


# --- moves between runs ------------------------------------------------------------------------


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
            old = {r.variant: r.plot_point(axes[key]) for r in before[key].rows}
            for row in after[key].rows:
                start, end = old.get(row.variant), row.plot_point(axes[key])
                if start is not None and end is not None and start != end:
                    moves.append(Move(*key, row.variant, start, end))
    return sorted(moves, key=lambda m: (*group_order((m.flavor, m.device_key)), variant_order(m.variant)))
