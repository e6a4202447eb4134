"""The report (bench/report.py) and sweeps (bench/sweep.py): frontier, tables, plots, bad input,
budget selection, OOM as a result.

``data/cpu-small-seed.json`` is a run of ``pytest bench/ --benchmark-json`` on the CPU (``small``
timed, ``seed`` estimated on fake tensors), trimmed; every expected figure below is derived from it.
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

from bench import analytic, report
from bench.record import Measurement
from bench.report import (Entry, ReportInputError, arrow_segments, load_run, main, make_group, pareto_front,
                          report_figure, run_moves)
from bench.sweep import SweepPoint, budget_fits, longest_fitting, measure_point, run_sweep, shape_at
from models import get_flavor

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


def entry(variant: str, peak: int, flops: int, median: float | None = None) -> Entry:
    strategy, attention = variant.rsplit("-", 1)
    return Entry(variant, strategy, attention, "tiny", "cpu", "cpu", 16, "2.13", "memtracker",
                 peak, peak, peak, flops, median)


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
    group = next(g for g in report.run_groups(load_run(RUN)) if g.flavor == "small")
    med, recs = medians(data, "small"), records(data, "small")
    assert group.axis == report.TIME and set(med) == set(recs)
    expected = brute_force_front({v: (med[v], recs[v]["peak_bytes"]) for v in recs})
    assert {r.entry.variant for r in group.rows if r.on_frontier} == expected
    for row in group.rows:
        v = row.entry.variant
        none = f"none-{row.entry.attention}"
        assert row.time_ratio == pytest.approx(med[v] / med[none])
        assert row.flop_overhead == pytest.approx(recs[v]["flops"] / recs[none]["flops"] - 1)


def test_untimed_group_frontier_uses_flop_overhead_and_breaks_ties_on_memory():
    """seed on the CPU is estimated, not timed: the frontier compares FLOP overhead, where
    none-eager and none-sdpa tie at 0 and the smaller one dominates."""
    data = raw()
    recs = records(data, "seed")
    group = next(g for g in report.run_groups(load_run(RUN)) if g.flavor == "seed")
    assert group.axis == report.FLOPS and group.estimated
    assert all(r.entry.median_s is None and r.time_ratio is None for r in group.rows)
    overhead = {v: r["flops"] / recs[f"none-{r['attention']}"]["flops"] - 1 for v, r in recs.items()}
    expected = brute_force_front({v: (overhead[v], r["peak_bytes"]) for v, r in recs.items()})
    assert {r.entry.variant for r in group.rows if r.on_frontier} == expected
    # The tie the rule decides: both none variants have no overhead; only the smaller is kept.
    assert overhead["none-eager"] == overhead["none-sdpa"] == 0
    assert recs["none-sdpa"]["peak_bytes"] < recs["none-eager"]["peak_bytes"]
    assert "none-sdpa" in expected and "none-eager" not in expected


def test_group_with_one_untimed_variant_falls_back_to_flop_overhead():
    run = load_run(RUN)
    entries = [dataclasses.replace(e, median_s=None) if e.variant == "full-sdpa" else e
               for e in run.entries if e.flavor == "small"]
    group = make_group(entries)
    assert group.axis == report.FLOPS
    full = next(r for r in group.rows if r.entry.variant == "full-sdpa")
    assert full.time_ratio is None and full.flop_overhead is not None
    expected = brute_force_front({r.entry.variant: (r.flop_overhead, r.entry.peak_bytes) for r in group.rows})
    assert {r.entry.variant for r in group.rows if r.on_frontier} == expected


def test_exact_time_and_memory_tie_keeps_both_on_the_frontier():
    group = make_group([entry("none-eager", 100, 1000, 1.0), entry("full-eager", 50, 1200, 2.0),
                        entry("attn-eager", 50, 1100, 2.0), entry("mlp-eager", 50, 1300, 2.0)])
    on = {r.entry.variant for r in group.rows if r.on_frontier}
    assert on == {"none-eager", "full-eager", "attn-eager", "mlp-eager"}
    slower = make_group([entry("none-eager", 100, 1000, 1.0), entry("full-eager", 50, 1200, 2.0),
                         entry("attn-eager", 50, 1100, 2.5)])
    assert {r.entry.variant for r in slower.rows if r.on_frontier} == {"none-eager", "full-eager"}


# --- the table ---------------------------------------------------------------------------------


def test_table_content_against_the_fixture(tmp_path, capsys):
    md = tmp_path / "report.md"
    assert main([str(RUN), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert capsys.readouterr().out.startswith("Activation checkpointing")
    data = raw()
    for flavor in ("small", "seed"):
        heading = f"{flavor} on cpu" + (f" ({report.ESTIMATE_LABEL})" if flavor == "seed" else "")
        rows = {cells[0]: cells[1:] for cells in markdown_rows(text, heading)}
        recs, med = records(data, flavor), medians(data, flavor)
        assert set(rows) == set(recs)
        for variant, r in recs.items():
            step, ratio, peak, act, saved, overhead, frontier, figures = rows[variant]
            none = recs[f"none-{r['attention']}"]
            assert peak == f"{r['peak_bytes'] / MIB:,.1f}"
            assert act == f"{r['activation_peak_bytes'] / MIB:,.1f}"
            assert saved == f"{r['saved_bytes'] / MIB:,.1f}"
            assert overhead == f"{(r['flops'] / none['flops'] - 1) * 100:+.1f}%"
            if flavor == "small":
                assert step == f"{med[variant] * 1e3:.1f}"
                assert ratio == f"{med[variant] / med[none['variant']]:.2f}"
                assert figures == "measured"
            else:
                assert step == ratio == ""
                assert figures == "estimate"
    assert text.count("| yes |") == sum(r.on_frontier for g in report.run_groups(load_run(RUN)) for r in g.rows)


def test_flavor_filter_and_unknown_flavor(tmp_path, capsys):
    assert main([str(RUN), "--flavor", "seed"]) == 0
    out = capsys.readouterr().out
    assert "seed on cpu" in out and "small on cpu" not in out
    assert main([str(RUN), "--flavor", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(RUN) in err and "tiny" in err and "seed, small" in err


def test_record_fields_are_measurement_fields():
    """The report reads the suite's record: every field it needs is a Measurement field."""
    assert set(report.REQUIRED_FIELDS) <= {f.name for f in dataclasses.fields(Measurement)}


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
    segments = arrow_segments(report_figure(runs))
    assert sorted(segments) == sorted(moves.values())
    assert arrow_segments(report_figure(runs[:1])) == []


def test_png_is_reproducible(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in paths:
        report.save_png(report_figure([load_run(RUN)]), path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


# --- bad input -------------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    data = raw()
    no_fields = copy.deepcopy(data)
    for r in no_fields["measurements"]:
        del r["peak_bytes"], r["flops"]
    plain = {k: v for k, v in data.items() if k != "measurements"}
    return {
        "missing": (tmp_path / "nowhere.json", "no such file"),
        "not json": (write(tmp_path / "notes.json", "peak: 3 GiB\n"), "not JSON"),
        "not this suite": (write(tmp_path / "plain.json", plain), "no 'measurements'"),
        "missing fields": (write(tmp_path / "old.json", no_fields), "lack required fields: flops, peak_bytes"),
    }


@pytest.mark.parametrize("bad", ["missing", "not json", "not this suite", "missing fields"])
def test_bad_input_is_one_line_exit_2(tmp_path, bad):
    path, says = _bad_inputs(tmp_path)[bad]
    proc = subprocess.run([sys.executable, "-m", "bench.report", "table", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    assert str(path) in proc.stderr and says in proc.stderr


@pytest.mark.parametrize("mutate, says", [
    (lambda d: d.update(measurements=[]), "'measurements' is empty"),
    (lambda d: d["measurements"][0].update(peak_bytes="3 GiB"), "peak_bytes (expected int)"),
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


def test_load_run_raises_report_input_error(tmp_path):
    with pytest.raises(ReportInputError, match="no such file"):
        load_run(tmp_path / "nowhere.json")


def test_help_explains_both_commands():
    text = report.build_parser().format_help()
    assert "table" in text and "sweep" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--help"])
    assert exit_info.value.code == 0


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
        strategy, attention = p.variant.split("-")
        assert (p.record.variant, p.record.seq_len) == (p.variant, p.seq_len)
        assert p.predicted_saved_bytes == analytic.saved_bytes(shape_at(shaped, "cpu"), strategy, attention)
        assert p.record.saved_bytes == pytest.approx(p.predicted_saved_bytes, rel=0.02)
    saved = {(p.variant, p.seq_len): p.record.saved_bytes for p in tiny_points}
    assert all(saved[(v, 32)] > saved[(v, 16)] for v in TINY_VARIANTS)


def test_sweep_command_writes_tables_and_plot(tmp_path, monkeypatch, tiny_points, capsys):
    monkeypatch.setattr(report, "run_sweep", lambda *args, **kwargs: tiny_points)
    budget_gib = max(p.record.peak_bytes for p in tiny_points if p.seq_len == 16) / 2 ** 30
    md, png = tmp_path / "sweep.md", tmp_path / "sweep.png"
    assert main(["sweep", "--flavor", "tiny", "--device", "cpu", "--seq-lens", "16,32",
                 "--variants", ",".join(TINY_VARIANTS), "--budget-gib", repr(budget_gib),
                 "--markdown", str(md), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    point = {(p.variant, p.seq_len): p for p in tiny_points}
    sweep_rows = {(cells[0], int(cells[1])): cells[2:] for cells in markdown_rows(text, "Sweep: tiny on cpu")}
    assert sweep_rows.keys() == point.keys()
    for (variant, seq_len), cells in sweep_rows.items():
        record, none = point[(variant, seq_len)].record, point[("none-eager", seq_len)].record
        assert cells[:3] == [f"{getattr(record, f) / MIB:,.1f}" for f in ("peak_bytes", "activation_peak_bytes",
                                                                           "saved_bytes")]
        assert cells[4] == f"{(record.flops / none.flops - 1) * 100:+.1f}%"
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
                                                       saved_bytes=peak, flops=1000, seq_len=seq_len)
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
    table = report.budget_table(fits, points, 4 / 2 ** 30, "fake")
    frontier = {row[0] for row in table.rows if row[-1] == "yes"}
    assert frontier == {"none-sdpa", "full-sdpa"}
    assert [row[0] for row in table.rows][-1] == "none-eager" and table.rows[-1][1] == "none fits"


def test_cuda_out_of_memory_is_a_recorded_result():
    tiny = get_flavor("tiny")

    def measure(flavor, variant, device):
        if flavor.seq_len > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return SimpleNamespace(peak_bytes=100, activation_peak_bytes=50, saved_bytes=40, flops=1000,
                               seq_len=flavor.seq_len)

    points = run_sweep(tiny, ["full-sdpa"], [16, 32, 64], "cpu", measure=measure)
    assert [p.oom for p in points] == [False, True, True]
    longer = dataclasses.replace(tiny, seq_len=32)
    assert points[1].predicted_saved_bytes == analytic.saved_bytes(shape_at(longer, "cpu"), "full", "sdpa")
    fit = longest_fitting(points, 1000)
    assert fit.point is points[0] and not fit.open_ended
    table = report.sweep_table(points, "fake")
    assert [row[2] for row in table.rows] == ["0.0", "OOM", "OOM"]

    def broken(flavor, variant, device):
        raise RuntimeError("not an out-of-memory error")

    with pytest.raises(RuntimeError, match="not an out-of-memory"):
        measure_point(tiny, "full-sdpa", "cpu", measure=broken)
