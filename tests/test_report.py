"""The report (bench/report/) and sweeps (ac_bench/sweep, ac_bench/cli/sweep.py): frontier, tables,
plots, bad input, budget selection, OOM as a result, both command lines.

``data/cpu-small-seed.json`` is a run of ``pytest bench/ --benchmark-json`` on the CPU (``small``
timed, ``seed`` estimated on fake tensors); every expected figure below is derived from it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ac_bench import analytic
from ac_bench.cli import sweep as sweep_cli
from ac_bench.cli.report import build_parser, main
from ac_bench.metrics import METRICS
from ac_bench.models import POLICIES, get_flavor
from ac_bench.record import Measurement
from ac_bench.report import frontier, tables
from ac_bench.report.frontier import FLOPS, make_group, pareto_front, run_groups, run_moves
from ac_bench.report.load import Entry, ReportInputError, load_run
from ac_bench.report.plots import arrow_segments, policy_color, report_figure, save_png
from ac_bench.sweep import SweepPoint, budget_fits, longest_fitting, measure_point, run_sweep, shape_at

ROOT = Path(__file__).resolve().parents[1]
RUN = Path(__file__).parent / "data" / "cpu-small-seed.json"
MIB = 2 ** 20


def raw() -> dict:
    return json.loads(RUN.read_text())


def records(data: dict, flavor: str) -> dict[str, dict]:
    return {r["variant"]: r for r in data["measurements"] if r["flavor"] == flavor}


def medians(data: dict, flavor: str) -> dict[str, float]:
    return {b["extra_info"]["variant"]: b["stats"]["median"] for b in data["benchmarks"]
            if b["name"].startswith("test_training_step[") and b["extra_info"]["flavor"] == flavor}


def brute_force_front(costs: dict[str, tuple[float, float]]) -> set[str]:
    """The definition, written out: on the frontier unless another is <= on both and != ."""
    return {v for v, (s, m) in costs.items()
            if not any(s2 <= s and m2 <= m and (s2, m2) != (s, m) for s2, m2 in costs.values())}


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def markdown_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the rows of the Markdown table under ``## heading``."""
    lines = text.splitlines()
    start = lines.index(f"## {heading}")
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("| ") and not line.startswith(("| ---", "| variant")):
            rows.append([c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split("|")])
    return rows


def entry(variant: str, peak: int, flops: int, median: float | None = None, backward: float | None = None,
          kernel: str | None = None) -> Entry:
    """A record of ``variant`` with the given peak and FLOPs, the rest from the fixture's first."""
    policy, attention = variant.rsplit("-", 1)
    record = dataclasses.replace(Measurement.from_dict(raw()["measurements"][0]), variant=variant, policy=policy,
                                 attention=attention, flavor="tiny", peak_bytes=peak, flops=flops,
                                 attention_kernel=kernel)
    return Entry(record, median, backward)


# --- the Pareto frontier -----------------------------------------------------------------------


def test_pareto_front_ties_and_missing_costs():
    costs = {
        "a": (1.0, 10), "a_twin": (1.0, 10),  # exact tie on both: neither dominates, both stay
        "b": (2.0, 5),
        "c": (2.0, 6),  # as fast as b, larger: dominated
        "d": (3.0, 5),  # as small as b, slower: dominated
        "e": (0.5, 11),  # fastest, largest: stays
        "f": None,  # no speed figure: not on the frontier, dominates nothing
    }
    assert pareto_front(costs) == {"a", "a_twin", "b", "e"}
    assert pareto_front({"x": None, "y": (9.0, 9)}) == {"y"}
    assert pareto_front({"x": None}) == set()


def test_timed_group_frontier_uses_median_time():
    data = raw()
    group = next(g for g in run_groups(load_run(RUN)) if g.flavor == "small")
    med, recs = medians(data, "small"), records(data, "small")
    assert group.axis == frontier.TIME and set(med) == set(recs)
    expected = brute_force_front({v: (med[v], recs[v]["peak_bytes"]) for v in recs})
    assert {r.variant for r in group.rows if r.on_frontier} == expected
    for row in group.rows:
        v = row.variant
        none = f"none-{row.entry.record.attention}"
        assert row.time_ratio == pytest.approx(med[v] / med[none])
        assert row.flop_overhead == pytest.approx(recs[v]["flops"] / recs[none]["flops"] - 1)


def test_untimed_group_frontier_uses_flop_overhead_and_breaks_ties_on_memory():
    """seed on the CPU is estimated, not timed: the frontier compares FLOP overhead, where
    none-eager, none-sdpa (and policies without recompute, like offload) tie at 0 and only the
    smallest is kept."""
    data = raw()
    recs = records(data, "seed")
    group = next(g for g in run_groups(load_run(RUN)) if g.flavor == "seed")
    assert group.axis == frontier.FLOPS and group.estimated
    assert all(r.entry.median_s is None and r.time_ratio is None for r in group.rows)
    overhead = {v: r["flops"] / recs[f"none-{r['attention']}"]["flops"] - 1 for v, r in recs.items()}
    expected = brute_force_front({v: (overhead[v], r["peak_bytes"]) for v, r in recs.items()})
    assert {r.variant for r in group.rows if r.on_frontier} == expected
    # The tie the rule decides: of the variants without overhead only the smallest is kept.
    free = {v for v in recs if overhead[v] == 0}
    assert {"none-eager", "none-sdpa"} <= free
    assert expected & free == {min(free, key=lambda v: recs[v]["peak_bytes"])}
    assert "none-eager" not in expected


def test_group_with_one_untimed_variant_falls_back_to_flop_overhead():
    run = load_run(RUN)
    entries = [dataclasses.replace(e, median_s=None) if e.record.variant == "full-sdpa" else e
               for e in run.entries if e.record.flavor == "small"]
    group = make_group(entries)
    assert group.axis == frontier.FLOPS
    full = next(r for r in group.rows if r.variant == "full-sdpa")
    assert full.time_ratio is None and full.flop_overhead is not None
    expected = brute_force_front({r.variant: (r.flop_overhead, r.entry.record.peak_bytes) for r in group.rows})
    assert {r.variant for r in group.rows if r.on_frontier} == expected


def test_exact_time_and_memory_tie_keeps_both_on_the_frontier():
    group = make_group([entry("none-eager", 100, 1000, 1.0), entry("full-eager", 50, 1200, 2.0),
                        entry("attn-eager", 50, 1100, 2.0), entry("mlp-eager", 50, 1300, 2.0)])
    on = {r.variant for r in group.rows if r.on_frontier}
    assert on == {"none-eager", "full-eager", "attn-eager", "mlp-eager"}
    slower = make_group([entry("none-eager", 100, 1000, 1.0), entry("full-eager", 50, 1200, 2.0),
                         entry("attn-eager", 50, 1100, 2.5)])
    assert {r.variant for r in slower.rows if r.on_frontier} == {"none-eager", "full-eager"}


# --- the table ---------------------------------------------------------------------------------


def _mib(value: int | None) -> str:
    """The table's MiB: one decimal from 100 MiB, 3 significant digits below (from 1e-4 MiB)."""
    if value is None:
        return "-"
    v = value / MIB
    return f"{v:,.1f}" if v == 0 or abs(v) >= 100 else f"{v:#.3g}"


def test_table_content_against_the_fixture(tmp_path, capsys):
    md = tmp_path / "report.md"
    assert main([str(RUN), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert capsys.readouterr().out.startswith("Activation checkpointing")
    data = raw()
    for flavor in ("small", "seed"):
        heading = f"{flavor} on cpu" + (f" ({tables.ESTIMATE_LABEL})" if flavor == "seed" else "")
        rows = {cells[0]: cells[1:] for cells in markdown_rows(text, heading)}
        recs, med = records(data, flavor), medians(data, flavor)
        assert set(rows) == set(recs)
        for variant, r in recs.items():
            (step, ratio, recompute, peak, act, kept, saved, offloaded, overhead, bwd_ops, bwd_bytes, on_front, figures,
             kernel) = rows[variant]
            assert recompute == ""  # the fixture predates phase timing
            assert bwd_ops == bwd_bytes == "-"  # the count of backward ops (schema 5) and their bytes (schema 7)
            assert kernel == (r.get("attention_kernel") or "-")  # the fixture is schema 2: not recorded
            none = recs[f"none-{r['attention']}"]
            assert [peak, act, kept, saved, offloaded] == [_mib(r[m]) for m in (
                "peak_bytes", "activation_peak_bytes", "forward_kept_bytes", "saved_bytes", "offloaded_bytes")]
            assert overhead == f"{(r['flops'] / none['flops'] - 1) * 100:+.1f}%"
            if flavor == "small":
                assert step == f"{med[variant] * 1e3:.1f}"
                assert ratio == f"{med[variant] / med[none['variant']]:.2f}"
                assert figures == "measured"
            else:
                assert step == ratio == ""
                assert figures == "estimate"
    assert text.count("| yes |") == sum(r.on_frontier for g in run_groups(load_run(RUN)) for r in g.rows)


def test_each_rank_of_a_sharded_run_is_its_own_group_timed_by_its_step_seconds(tmp_path, capsys):
    """Records of a torchrun launch (world size 2, ranks 0 and 1, bench/test_distributed.py puts
    them in the JSON) next to the single process's: a table per rank, titled with world size and
    rank, its step time the record's own ``step_seconds``, with no time ratio and its frontier on
    FLOP overhead (on the CPU those are wall times of ranks sharing the cores); the same variant on two ranks is not a
    duplicate, on one rank twice it is."""
    data = raw()
    small = records(data, "small")
    sharded = []
    for rank, seconds in ((0, 0.25), (1, 0.5)):
        for variant in ("none-sdpa", "full-sdpa"):
            r = dict(small[variant], world_size=2, rank=rank, global_batch=2 * small[variant]["batch"],
                     step_seconds=seconds * (2 if variant == "full-sdpa" else 1))
            sharded.append(r)
    data["measurements"] = data["measurements"] + sharded
    md = tmp_path / "report.md"
    assert main([str(write(tmp_path / "w2.json", data)), "--markdown", str(md)]) == 0, capsys.readouterr().err
    text = md.read_text()
    for rank, seconds in ((0, 0.25), (1, 0.5)):
        rows = {cells[0]: cells[1:] for cells in markdown_rows(text, f"small FSDP2 W=2 rank {rank} on cpu")}
        assert set(rows) == {"none-sdpa", "full-sdpa"}, f"rank {rank}: rows {sorted(rows)}"
        assert rows["none-sdpa"][0] == f"{seconds * 1e3:.1f}" and rows["full-sdpa"][1] == "", f"rank {rank}: {rows}"
    # The single process's table is unchanged: every small variant, no sharded row.
    assert {cells[0] for cells in markdown_rows(text, "small on cpu")} == set(small), "small on cpu lost or gained rows"
    # A CPU launch's wall times (ranks sharing the cores) are shown, and the frontier is on FLOPs.
    assert text.count("Frontier on FLOP overhead (step ms: the median wall time of three steps of a CPU launch") == 2, text
    for rank in (0, 1):
        group = next(g for g in run_groups(load_run(tmp_path / "w2.json")) if g.title.startswith(f"small FSDP2 W=2 rank {rank}"))
        assert group.axis == FLOPS, (rank, group.axis)
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    assert titles.index("## small on cpu") < titles.index("## small FSDP2 W=2 rank 0 on cpu") \
        < titles.index("## small FSDP2 W=2 rank 1 on cpu"), titles
    data["measurements"].append(dict(sharded[0]))
    assert main([str(write(tmp_path / "dup.json", data))]) == 2
    assert "two measurement records of small none-sdpa on cpu (rank 0 of 2)" in capsys.readouterr().err


def test_a_launchs_records_json_and_rank_files_are_read_as_they_are(tmp_path, capsys):
    """``python -m ac_bench.distributed`` writes ``OUT/records.json`` (every rank's records, with
    the launch's world size) and ``OUT/rank{R}.json`` (one rank's list): the report reads both,
    one table per rank, without a pytest run around the launch; a file of neither shape is one line
    naming both."""
    small = records(raw(), "small")
    ranks = [dict(small[v], world_size=2, rank=rank, global_batch=2 * small[v]["batch"], step_seconds=0.5)
             for rank in (0, 1) for v in ("none-sdpa", "full-sdpa")]
    launch = write(tmp_path / "records.json", {"world_size": 2, "flavor": "small", "device_type": "cpu",
                                               "not_composed": {}, "records": ranks})
    rank1 = write(tmp_path / "rank1.json", [r for r in ranks if r["rank"] == 1])
    for path, groups in ((launch, {0, 1}), (rank1, {1})):
        md = tmp_path / f"{path.stem}.md"
        assert main([str(path), "--markdown", str(md)]) == 0, capsys.readouterr().err
        titles = {line for line in md.read_text().splitlines() if line.startswith("## ")}
        assert titles == {f"## small FSDP2 W=2 rank {r} on cpu" for r in groups}, (path.name, titles)
    assert main([str(write(tmp_path / "other.json", {"records": ranks}))]) == 2
    err = capsys.readouterr().err
    assert "nor a launch's records.json or rank{R}.json (python -m ac_bench.distributed)" in err and err.count("\n") == 1, err


def test_table_rows_follow_the_policy_registry():
    """Policies in models.POLICIES order (attention inner); others after them, in natural order."""
    for group in run_groups(load_run(RUN)):
        order = [list(POLICIES).index(r.entry.record.policy) for r in group.rows]
        assert order == sorted(order)
    names = ["sequential_2-eager", "every_10-sdpa", "every_4-sdpa", "full-sdpa", "every_4-eager", "none-eager"]
    group = make_group([entry(v, 100, 1000) for v in names])
    assert [r.variant for r in group.rows] == ["none-eager", "full-sdpa", "every_4-eager", "every_4-sdpa",
                                               "every_10-sdpa", "sequential_2-eager"]


def test_recompute_time_is_backward_minus_nones_and_the_kernel_is_shown():
    """recompute ms = backward(policy) - backward(none) with the same attention; blank where a
    backward phase was not recorded; the kernel column shows the record's attention_kernel."""
    group = make_group([entry("none-sdpa", 100, 1000, 0.50, 0.30, "cpu_flash"),
                        entry("full-sdpa", 80, 1200, 0.62, 0.42, "cpu_flash"),
                        entry("none-eager", 100, 1000, 0.9, None, "math"), entry("full-eager", 80, 1200, 1.1, None, "math")])
    table = tables.group_table(group)
    recompute, kernel = table.header.index("recompute ms"), table.header.index("kernel")
    cells = {row[0]: (row[recompute], row[kernel]) for row in table.rows}
    assert cells == {"none-sdpa": ("0.0", "cpu_flash"), "full-sdpa": ("120.0", "cpu_flash"),
                     "none-eager": ("", "math"), "full-eager": ("", "math")}


def test_the_report_shows_the_ops_of_backward():
    """bwd ops and bwd non-matmul MiB: the record's ``backward_ops`` and
    ``backward_nonmatmul_bytes`` and, in brackets, how much more than `none` with the same
    attention; without `none` the figure alone; ``-`` where the record has none."""
    def counted(variant: str, ops: int | None, nonmatmul_mib: float | None) -> Entry:
        e = entry(variant, 100, 1000)
        return Entry(dataclasses.replace(e.record, backward_ops=ops, backward_nonmatmul_bytes=None if nonmatmul_mib is None
                                         else int(nonmatmul_mib * MIB)))

    group = make_group([counted("none-sdpa", 94, 10.0), counted("sac-sdpa", 106, 12.5), counted("full-eager", 112, 3.0),
                        counted("full-sdpa", None, None)])
    table = tables.group_table(group)
    ops, nonmatmul = (table.header.index(METRICS[m].column) for m in ("backward_ops", "backward_nonmatmul_bytes"))
    assert {row[0]: (row[ops], row[nonmatmul]) for row in table.rows} == {
        "none-sdpa": ("94 (+0)", "10.0 (+0.0)"), "sac-sdpa": ("106 (+12)", "12.5 (+2.50)"), "full-eager": ("112", "3.00"),
        "full-sdpa": ("-", "-")}
    text = tables.report_text([load_run(RUN)], markdown=True)
    assert METRICS["backward_ops"].meaning in text and METRICS["backward_nonmatmul_bytes"].meaning in text
    assert "records that predate it (schema version 6 and older)" in text


def test_null_saved_bytes_show_as_dash_with_the_note():
    records_ = [entry("none-eager", 100, 1000), entry("sac-eager", 80, 1100)]
    note = "selective checkpointing keeps what it saves in its own cache"
    sac = dataclasses.replace(records_[1].record, saved_bytes=None, saved_bytes_note=note)
    table = tables.group_table(make_group([records_[0], Entry(sac)]))
    saved = table.header.index("saved MiB")
    assert {row[0]: row[saved] for row in table.rows}["sac-eager"] == "-"
    assert any("sac-eager" in n and note in n for n in table.notes)


def test_columns_are_explained_by_the_metric_registry():
    """The report reads the suite's record (Measurement) and explains each metric column with
    ac_bench.metrics' meaning: no second list of fields or definitions."""
    run = load_run(RUN)
    assert all(isinstance(e.record, Measurement) for e in run.entries)
    text = tables.report_text([run], markdown=True)
    for name in tables.MIB_COLUMNS.values():
        assert name in METRICS and f"`{name}`" in text and METRICS[name].meaning in text
    assert METRICS["flops"].meaning in text


def test_flavor_filter_and_unknown_flavor(tmp_path, capsys):
    assert main([str(RUN), "--flavor", "seed"]) == 0
    out = capsys.readouterr().out
    assert "seed on cpu" in out and "small on cpu" not in out
    assert main([str(RUN), "--flavor", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(RUN) in err and "tiny" in err and "seed, small" in err


# --- before/after plot ---------------------------------------------------------------------------


def _after(data: dict) -> tuple[dict, dict[tuple[str, str], tuple[tuple[float, float], tuple[float, float]]]]:
    """A second run in which three variants moved, and the arrows the plot must draw."""
    after = copy.deepcopy(data)
    small, seed = records(after, "small"), records(after, "seed")
    small["full-sdpa"]["peak_bytes"] //= 2  # moves left
    seed["mlp-eager"]["flops"] = int(seed["mlp-eager"]["flops"] * 1.1)  # moves up: FLOP overhead
    for b in after["benchmarks"]:
        if b["extra_info"]["variant"] == "none-eager":
            b["stats"]["median"] *= 1.5  # moves up: time
    before_small, before_seed, med = records(data, "small"), records(data, "seed"), medians(data, "small")

    def time_point(recs, variant, median):
        return (recs[variant]["peak_bytes"] / MIB, median * 1e3)

    def flop_point(recs, variant):
        none = recs[f"none-{recs[variant]['attention']}"]
        return (recs[variant]["peak_bytes"] / MIB, (recs[variant]["flops"] / none["flops"] - 1) * 100)

    expected = {
        ("small", "full-sdpa"): (time_point(before_small, "full-sdpa", med["full-sdpa"]),
                                 time_point(small, "full-sdpa", med["full-sdpa"])),
        ("small", "none-eager"): (time_point(before_small, "none-eager", med["none-eager"]),
                                  time_point(small, "none-eager", med["none-eager"] * 1.5)),
        ("seed", "mlp-eager"): (flop_point(before_seed, "mlp-eager"), flop_point(seed, "mlp-eager")),
    }
    return after, expected


def test_runs_that_share_no_variant_say_nothing_could_move(tmp_path, capsys):
    """small's records against seed's (an empty "moved" table and no word about it before)."""
    def only(flavor):
        data = raw()
        data["measurements"] = [r for r in data["measurements"] if r["flavor"] == flavor]
        data["benchmarks"] = [b for b in data["benchmarks"] if b.get("extra_info", {}).get("flavor") == flavor]
        return write(tmp_path / f"{flavor}.json", data)
    assert main([str(only("small")), str(only("seed"))]) == 0
    out = capsys.readouterr().out
    assert "The runs share no variant of one flavor and device, so nothing could move" in out, out[-2000:]
    assert main([str(RUN), str(RUN.with_name(RUN.name))]) == 2  # the same file twice is refused, as before
    capsys.readouterr()


def test_runs_that_share_variants_and_moved_nothing_say_so(tmp_path, capsys):
    """The same records twice (two torch versions that agree: docs/torch-2.13.0-vs-2.15.0.md):
    the "moved" table is empty, and a note says why rather than leaving an empty table."""
    data = raw()
    data["measurements"] = [r for r in data["measurements"] if r["flavor"] == "small"]
    data["benchmarks"] = [b for b in data["benchmarks"] if b.get("extra_info", {}).get("flavor") == "small"]
    before, after = write(tmp_path / "before.json", data), write(tmp_path / "after.json", data)
    assert main([str(before), str(after)]) == 0
    out = capsys.readouterr().out
    n = len(data["measurements"])
    assert (f"Nothing moved: each of the {n} variants the runs share has the same figures (peak, speed, and every "
            f"gated figure) in both.") in out, out[-2000:]
    assert out.rstrip().endswith("in both."), "an empty table header after the note: " + out[-500:]
    moved = copy.deepcopy(data)
    records(moved, "small")["full-sdpa"]["peak_bytes"] //= 2
    assert main([str(before), str(write(tmp_path / "moved.json", moved))]) == 0
    assert "Nothing moved" not in capsys.readouterr().out


def test_moves_table_names_every_gated_figure_that_moved(tmp_path, capsys):
    """A save list that keeps one more activation where the peak does not reach it (a user's
    ``sac`` at tiny: the gate failed on forward_kept_bytes +25.55% and backward_ops 106 -> 104,
    the peak and speed the same): the report names each figure that moved, before and after,
    not "Nothing moved". A figure null on one side (saved_bytes) is not compared."""
    data = raw()
    data["measurements"] = [r for r in data["measurements"] if r["flavor"] == "small"]
    data["benchmarks"] = [b for b in data["benchmarks"] if b.get("extra_info", {}).get("flavor") == "small"]
    records(data, "small")["sac-sdpa"]["backward_ops"] = 106
    after = copy.deepcopy(data)
    sac, full = records(after, "small")["sac-sdpa"], records(after, "small")["full-eager"]
    assert sac["forward_kept_bytes"] == 43155456 and sac["peak_bytes"] == 64486088  # 41.2 MiB kept, 61.5 MiB peak
    sac["forward_kept_bytes"] = 54181888  # +25.55%: 51.7 MiB
    sac["backward_ops"] = 104
    old_act = full["activation_peak_bytes"]
    full["activation_peak_bytes"] += 4096  # the same in MiB to 3 digits: written in bytes
    assert tables.mib(old_act) == tables.mib(old_act + 4096)
    records(after, "small")["full-sdpa"]["saved_bytes"] = None  # null: not a move
    before_path, after_path = write(tmp_path / "before.json", data), write(tmp_path / "after.json", after)
    md = tmp_path / "report.md"
    assert main([str(before_path), str(after_path), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "Nothing moved" not in out, out[-2000:]
    assert "forward_kept_bytes 41.2 -> 51.7 MiB (+25.6%); backward_ops 106 -> 104 (-1.9%)" in out, out[-2000:]
    rows = {r[1]: r for r in markdown_rows(md.read_text(), "Moved between runs") if r[0] != "group"}
    ms = medians(data, "small")["sac-sdpa"] * 1e3
    assert rows["sac-sdpa"] == ["small on cpu", "sac-sdpa", "61.5 -> 61.5", f"{ms:.1f} ms -> {ms:.1f} ms",
                                "forward_kept_bytes 41.2 -> 51.7 MiB (+25.6%); backward_ops 106 -> 104 (-1.9%)"]
    assert rows["full-eager"][4] == (f"activation_peak_bytes {old_act:,} -> {old_act + 4096:,} B (+0.0%) "
                                     f"[within the gate's tolerance]"), "4 KiB of 2%: a move the gate passes"
    assert "within the gate's tolerance" not in rows["sac-sdpa"][4]
    assert rows.keys() == {"sac-sdpa", "full-eager"}, rows.keys()

    # The same records twice: nothing moved, and the note says what was compared.
    same = write(tmp_path / "same.json", data)
    assert main([str(before_path), str(same)]) == 0
    out = capsys.readouterr().out
    assert ("Nothing moved: each of the 20 variants the runs share has the same figures (peak, speed, and every "
            "gated figure) in both.") in out, out[-2000:]


def test_within_gate_asks_the_gates_own_rule():
    """A move the report marks as within the gate's tolerance is one the gate passes: the
    registry's tolerance for a single-process record (2% of a peak, 0.5% of FLOPs), one
    block's FSDP buffers for a peak of a real sharded launch's rank, and the registry's tolerance
    for every other figure of that rank."""
    from ac_bench.analytic import Shape, fsdp_unsharded_peak_bytes
    record = Measurement.from_dict(raw()["measurements"][0])
    peak = record.activation_peak_bytes
    assert tables.within_gate(record, "activation_peak_bytes", int(peak * 1.019))
    assert not tables.within_gate(record, "activation_peak_bytes", int(peak * 1.021))
    assert tables.within_gate(record, "flops", int(record.flops * 1.004))
    assert not tables.within_gate(record, "flops", int(record.flops * 1.006)), "0.5% for FLOPs"
    launched = dataclasses.replace(record, world_size=2, rank=0, global_batch=record.batch * 2)
    block = fsdp_unsharded_peak_bytes(Shape.of_record(launched), 2)
    over = record.peak_bytes + block + 1  # 0.55% of seed's peak: within 2% alone, beyond a launch's bound
    assert tables.within_gate(record, "peak_bytes", over)
    assert tables.within_gate(launched, "peak_bytes", launched.peak_bytes + block)
    assert not tables.within_gate(launched, "peak_bytes", over)
    assert not tables.within_gate(launched, "forward_kept_bytes", int(launched.forward_kept_bytes * 1.02))


def test_moved_figures_compares_every_gated_metric_exactly():
    """Every metric of the registry is compared, any change counts, None on either side is skipped."""
    record = Measurement.from_dict(raw()["measurements"][0])
    for name in METRICS:
        value = getattr(record, name)
        base = dataclasses.replace(record, **{name: 1000 if value is None else value})
        moved = dataclasses.replace(base, **{name: getattr(base, name) + 1})
        assert tables.moved_figures(base, moved) == [(name, getattr(base, name), getattr(base, name) + 1)], name
        assert tables.moved_figures(base, base) == []
        if METRICS[name].nullable:
            assert tables.moved_figures(base, dataclasses.replace(base, **{name: None})) == [], name
    assert tables.figure_change("flops", 7_766_016, 7_798_784) == "flops 7.77 MFLOP -> 7.80 MFLOP (+0.4%)"
    assert tables.figure_change("flops", 7_766_016, 7_766_017) == "flops 7,766,016 -> 7,766,017 FLOP (+0.0%)"
    assert tables.figure_change("offloaded_bytes", 0, 2 ** 20) == "offloaded_bytes 0.0 -> 1.00 MiB"


def test_before_after_plot_connects_moved_points(tmp_path, capsys):
    after, expected = _after(raw())
    after_path = write(tmp_path / "after.json", after)
    png = tmp_path / "compare.png"
    assert main([str(RUN), str(after_path), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Moved between runs" in capsys.readouterr().out
    runs = [load_run(RUN), load_run(after_path)]
    moves = {(m.flavor, m.variant): (m.start, m.end) for m in run_moves(runs)}
    assert moves.keys() == expected.keys()
    for key, (start, end) in expected.items():
        assert moves[key] == (pytest.approx(start), pytest.approx(end))
    listed = {(r[0], r[1]) for r in tables.moves_table(runs).rows}
    assert {(f"{m.flavor} on {m.device_key}", m.variant) for m in run_moves(runs)} <= listed  # every arrow a row
    segments = arrow_segments(report_figure(runs))
    assert sorted(segments) == sorted(moves.values())
    assert arrow_segments(report_figure(runs[:1])) == []


def test_png_is_reproducible(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in paths:
        save_png(report_figure([load_run(RUN)]), path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_every_policy_has_its_own_colour():
    """Registry policies get distinct colours whatever their number; others a fixed one of their own."""
    colours = [policy_color(p) for p in POLICIES]
    assert len(set(colours)) == len(colours)
    assert policy_color("every_4") == policy_color("every_4") and policy_color("every_4") not in colours


# --- bad input -------------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    data = raw()
    no_fields = copy.deepcopy(data)
    for r in no_fields["measurements"]:
        del r["peak_bytes"], r["flops"]
    plain = {k: v for k, v in data.items() if k != "measurements"}
    old_schema = copy.deepcopy(data)
    for r in old_schema["measurements"]:
        del r["schema_version"]
    return {
        "missing": (tmp_path / "nowhere.json", "no such file"),
        "not json": (write(tmp_path / "notes.json", "peak: 3 GiB\n"), "not JSON"),
        "not this suite": (write(tmp_path / "plain.json", plain), "no 'measurements'"),
        "missing fields": (write(tmp_path / "old.json", no_fields), "measurements[0]: measurement record lacks "
                                                                    "flops, peak_bytes"),
        "old schema": (write(tmp_path / "v1.json", old_schema), "measurements[0]: measurement record of schema "
                                                                "version None"),
    }


@pytest.mark.parametrize("bad", ["missing", "not json", "not this suite", "missing fields", "old schema"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, bad):
    """In this process (``main``); tests/test_bad_input.py runs the command in a real one too."""
    path, says = _bad_inputs(tmp_path)[bad]
    code = main(["table", str(path)])
    out, err = capsys.readouterr()
    assert code == 2, f"{bad}: exit {code}: {err}"
    assert "Traceback" not in err and out == "", f"{bad}: {out}{err}"
    assert err.endswith("\n") and err.count("\n") == 1, f"{bad}: not one line: {err}"
    assert str(path) in err and says in err, f"{bad}: {err!r} does not name {path} and say {says!r}"


@pytest.mark.parametrize("mutate, says", [
    (lambda d: d.update(measurements=[]), "'measurements' is empty"),
    (lambda d: d["measurements"][0].update(peak_bytes="3 GiB"), "measurements[0]: measurement record field "
                                                                "peak_bytes must be a non-negative integer"),
    (lambda d: d["measurements"][1].update(variant=5), "measurements[1]: measurement record field variant must be "
                                                       "of type str, got 5"),
    (lambda d: d["measurements"][2].update(policy_params=[]), "measurements[2]: measurement record field "
                                                              "policy_params must be of type dict"),
    (lambda d: d["measurements"].__setitem__(3, "none-eager"), "measurements[3]: a measurement record must be a JSON "
                                                                "object"),
    (lambda d: d["benchmarks"][0]["stats"].pop("median"), "lacks extra_info"),
    (lambda d: d["measurements"].append(dict(d["measurements"][0])), "two measurement records"),
])
def test_more_bad_input_in_process(tmp_path, capsys, mutate, says):
    data = raw()
    mutate(data)
    path = write(tmp_path / "bad.json", data)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and says in err


def test_unwritable_output_is_one_line_exit_2(tmp_path, capsys):
    blocker = write(tmp_path / "file", "not a folder")
    assert main([str(RUN), "--markdown", str(blocker / "report.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m ac_bench.report table: error: ") and err.count("\n") == 1 and "cannot write" in err


def test_a_full_disk_names_the_file_and_keeps_the_earlier_one(tmp_path, monkeypatch, capsys):
    """The write fails part-way (no space left, an OSError with no file name): one line naming
    the file (it said ``None: cannot write`` before), and the earlier report stays whole."""
    import errno

    import ac_bench.outputs
    report = write(tmp_path / "report.md", "the earlier report\n")
    real_fsync = ac_bench.outputs.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ac_bench.outputs.os, "fsync", full)
    assert main([str(RUN), "--markdown", str(report)]) == 2
    monkeypatch.setattr(ac_bench.outputs.os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert err == f"python -m ac_bench.report table: error: {report}: cannot write: No space left on device\n", err
    assert report.read_text() == "the earlier report\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_load_run_raises_report_input_error(tmp_path):
    with pytest.raises(ReportInputError, match="no such file"):
        load_run(tmp_path / "nowhere.json")


def test_help_explains_both_commands(capsys):
    text = " ".join(build_parser().format_help().split())  # argparse wraps lines at the terminal's width
    assert "table" in text and "sweep" in text and "plan" in text and "python -m ac_bench.sweep" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--help"])
    assert exit_info.value.code == 0
    alias = capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main(["--help"])
    assert exit_info.value.code == 0
    own = capsys.readouterr().out
    # The same options and text; only the program name differs.
    assert alias.split() == own.replace("python -m ac_bench.sweep", "python -m ac_bench.report sweep").split()


@pytest.mark.parametrize("command", [["ac_bench.report", "--help"], ["ac_bench.report", "sweep", "--help"],
                                     ["ac_bench.sweep", "--help"], ["ac_bench.report", "table", str(RUN)],
                                     ["ac_bench.report", str(RUN)]])
def test_commands_run_as_modules(command):
    proc = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("usage: python -m " if "--help" in command else "Activation checkpointing")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks --device cuda on a machine without CUDA")
@pytest.mark.parametrize("command", [["ac_bench.sweep"], ["ac_bench.report", "sweep"]])
def test_sweep_on_missing_cuda_is_one_line_exit_2(command):
    proc = subprocess.run([sys.executable, "-m", *command, "--device", "cuda"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"python -m {' '.join(command)}: error: --device cuda: no CUDA device is available\n"


# --- sweeps ------------------------------------------------------------------------------------------

TINY_SEQ_LENS = (16, 32)
TINY_VARIANTS = ("none-eager", "full-eager")


@pytest.fixture(scope="module")
def tiny_points() -> list[SweepPoint]:
    """Measured in two worker processes, as the command line does on the CPU."""
    return run_sweep(get_flavor("tiny"), TINY_VARIANTS, TINY_SEQ_LENS, "cpu", jobs=2)


def test_sweep_measures_each_variant_at_each_length(tiny_points):
    tiny = get_flavor("tiny")
    assert [(p.variant, p.seq_len) for p in tiny_points] == [(v, s) for s in TINY_SEQ_LENS for v in TINY_VARIANTS]
    for p in tiny_points:
        shaped = dataclasses.replace(tiny, seq_len=p.seq_len)
        policy, attention = p.variant.split("-")
        assert (p.record.variant, p.record.seq_len) == (p.variant, p.seq_len)
        assert p.predicted_saved_bytes == analytic.kept_bytes(shape_at(shaped, "cpu"), policy, attention)
        assert p.record.forward_kept_bytes == pytest.approx(p.predicted_saved_bytes, rel=0.02)
        assert p.record.saved_bytes == pytest.approx(p.predicted_saved_bytes, rel=0.02)
    saved = {(p.variant, p.seq_len): p.record.saved_bytes for p in tiny_points}
    assert all(saved[(v, 32)] > saved[(v, 16)] for v in TINY_VARIANTS)


def test_sweep_command_writes_tables_and_plot(tmp_path, monkeypatch, tiny_points, capsys):
    """``python -m ac_bench.sweep`` and its alias ``python -m ac_bench.report sweep``: same output."""
    monkeypatch.setattr(sweep_cli, "run_sweep", lambda *args, **kwargs: tiny_points)
    budget_gib = max(p.record.peak_bytes for p in tiny_points if p.seq_len == 16) / 2 ** 30
    outputs = []
    for command, name in ((sweep_cli.main, "own"), (lambda argv: main(["sweep", *argv]), "alias")):
        md, png = tmp_path / f"{name}.md", tmp_path / f"{name}.png"
        assert command(["--flavor", "tiny", "--device", "cpu", "--seq-lens", "16,32",
                        "--variants", ",".join(TINY_VARIANTS), "--budget-gib", repr(budget_gib),
                        "--markdown", str(md), "--plot", str(png)]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        outputs.append((capsys.readouterr(), md.read_text(), png.read_bytes()))
    assert outputs[0] == outputs[1]
    text = outputs[0][1]
    point = {(p.variant, p.seq_len): p for p in tiny_points}
    sweep_rows = {(cells[0], int(cells[1])): cells[2:] for cells in markdown_rows(text, "Sweep: tiny on cpu")}
    assert sweep_rows.keys() == point.keys()
    for (variant, seq_len), cells in sweep_rows.items():
        p, none = point[(variant, seq_len)], point[("none-eager", seq_len)].record
        measured = ("peak_bytes", "activation_peak_bytes", "forward_kept_bytes", "saved_bytes")
        assert cells[:5] == [_mib(getattr(p.record, f)) for f in measured] + [_mib(p.predicted_saved_bytes)]
        assert cells[5] == f"{(p.record.flops / none.flops - 1) * 100:+.1f}%"
    budget_rows = markdown_rows(text, f"Memory budget {budget_gib:g} GiB: tiny on cpu")
    fits = {f.variant: f for f in budget_fits(tiny_points, int(budget_gib * 2 ** 30))}
    assert {cells[0] for cells in budget_rows} == set(TINY_VARIANTS)
    assert any(f.point is not None and not f.open_ended for f in fits.values())  # the budget cuts
    for variant, longest, *_ in budget_rows:
        fit = fits[variant]
        assert longest == ("none fits" if fit.point is None else
                           (">= " if fit.open_ended else "") + str(fit.point.seq_len))


def _fake_point(variant: str, seq_len: int, peak: int | None, overhead: float = 0.0) -> SweepPoint:
    record = None if peak is None else SimpleNamespace(peak_bytes=peak, activation_peak_bytes=peak,
                                                       forward_kept_bytes=peak, saved_bytes=peak, flops=1000,
                                                       seq_len=seq_len)
    return SweepPoint(variant, seq_len, record, predicted_saved_bytes=peak or 0, predicted_flop_overhead=overhead)


@pytest.mark.parametrize("peaks, budget, longest, open_ended", [
    ([1, 2, 3, 4], 2, 1, False),  # equal to the budget fits
    ([1, 2, 3, 4], 10, 3, True),  # everything fits: longer lengths may fit too
    ([5, 6], 4, None, False),  # not even the shortest
    ([1, 5, 2], 3, 0, False),  # stops at the first that does not fit
    ([1, None, 2], 3, 0, False),  # OOM counts as not fitting
])
def test_longest_fitting(peaks, budget, longest, open_ended):
    """``longest``: the index of the expected sequence length, shortest first."""
    seq_lens = [512 * 2 ** i for i in range(len(peaks))]
    points = [_fake_point("full-sdpa", s, p) for s, p in zip(seq_lens, peaks)][::-1]  # any order
    fit = longest_fitting(points, budget)
    assert (fit.point and fit.point.seq_len) == (None if longest is None else seq_lens[longest])
    assert fit.open_ended is open_ended


def test_budget_frontier_trades_length_against_overhead():
    points = [_fake_point(v, s, peak, overhead) for v, overhead, peaks in [
        ("none-sdpa", 0.0, {512: 1, 1024: 9}),  # short, free
        ("full-sdpa", 0.25, {512: 1, 1024: 2}),  # long, costly
        ("full-eager", 0.30, {512: 1, 1024: 2}),  # as long as full-sdpa, costlier: dominated
        ("none-eager", 0.0, {512: 9, 1024: 9}),  # fits nothing: no row on the frontier
    ] for s, peak in peaks.items()]
    fits = budget_fits(points, 4)
    assert [f.variant for f in fits] == ["none-sdpa", "full-sdpa", "full-eager", "none-eager"]
    table = tables.budget_table(fits, points, 4 / 2 ** 30, "fake")
    front = {row[0] for row in table.rows if row[-1] == "yes"}
    assert front == {"none-sdpa", "full-sdpa"}
    assert [row[0] for row in table.rows][-1] == "none-eager" and table.rows[-1][1] == "none fits"


def test_cuda_out_of_memory_is_a_recorded_result():
    tiny = get_flavor("tiny")

    def measure(flavor, variant, device):
        if flavor.seq_len > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return SimpleNamespace(peak_bytes=100, activation_peak_bytes=50, forward_kept_bytes=40, saved_bytes=40,
                               flops=1000, seq_len=flavor.seq_len, outcome="ok")

    points = run_sweep(tiny, ["full-sdpa"], [16, 32, 64], "cpu", measure=measure)
    assert [p.oom for p in points] == [False, True, True]
    longer = dataclasses.replace(tiny, seq_len=32)
    assert points[1].predicted_saved_bytes == analytic.kept_bytes(shape_at(longer, "cpu"), "full", "sdpa")
    fit = longest_fitting(points, 1000)
    assert fit.point is points[0] and not fit.open_ended
    table = tables.sweep_table(points, "fake")
    assert [row[2] for row in table.rows] == ["0.0000954", "OOM", "OOM"]  # 100 B: 3 significant digits

    def broken(flavor, variant, device):
        raise RuntimeError("not an out-of-memory error")

    with pytest.raises(RuntimeError, match="not an out-of-memory"):
        measure_point(tiny, "full-sdpa", "cpu", measure=broken)
