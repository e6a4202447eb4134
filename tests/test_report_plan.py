"""``python -m ac_bench.report plan``: the plan, its figures and plot; bad input is one line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ac_bench.cli.report import main
from tests.helpers import ROOT


def test_plan_command_prints_the_plan_and_writes_plot_and_markdown(tmp_path, capsys):
    plot, markdown = tmp_path / "plan.png", tmp_path / "plan.md"
    status = main(["plan", "--flavor", "tiny", "--attention", "eager", "--budget-gib", "0.00075",
                   "--plot", str(plot), "--markdown", str(markdown), "--compile-budgets", "1.0,0.0"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.startswith("plan: tiny eager, budget 0.00075 GiB (805306 B)") and "cheaper per byte saved:" in out
    assert "; measured peak " in out.splitlines()[0], out  # tiny steps real tensors
    # Each table in the units its largest figure fills: tiny's peaks are under 1 MiB, its
    # sublayers recompute under 1 MFLOP (every row read "0.001" GiB and "0.000" GFLOP before).
    assert "| sublayer | KiB saved | kFLOP recomputed | kFLOP per KiB saved |" in out, out
    assert "| plan | checkpointed | predicted peak KiB | kept KiB | recompute " in out, out
    chosen = re.search(r": (plan_a\d+_m\d+)-eager, .*predicted (\d+)\)", out.splitlines()[0])
    row = next(line for line in out.splitlines() if line.startswith(f"| {chosen[1]} | "))
    assert f" | {int(chosen[2]) / 1024:.3f} | " in row, (row, chosen[2])
    # and the line above them too (it read "measured peak 0.001 GiB", "kept 0.1 MiB", "0.00 GFLOP").
    assert f"measured peak {int(chosen[2]) / 1024:.2f} KiB ({chosen[2]} B, " in out.splitlines()[0], out
    assert re.search(r", kept [\d.]+ KiB, recompute [\d.]+ k?FLOP ", out.splitlines()[0]), out
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    text = markdown.read_text()
    assert "Regenerate: `python -m ac_bench.report plan --flavor tiny --attention eager --budget-gib 0.00075" in text


def test_a_peak_traced_on_fake_tensors_is_not_called_measured():
    """The plan line says ``traced peak`` for a record of fake tensors (``seed`` on the CPU) and
    ``measured peak`` for real ones (``Measurement.peak_how``)."""
    import json

    from ac_bench.record import Measurement
    records = [Measurement.from_dict(r) for r in
               json.loads((ROOT / "tests" / "data" / "cpu-small-seed.json").read_text())["measurements"]]
    how = {(r.flavor, r.memory_method, r.peak_how) for r in records}
    assert how == {("seed", "fake-memtracker", "traced"), ("small", "memtracker", "measured")}, how


@pytest.mark.parametrize("args,message", [
    (["--budget-gib", "0"], "positive number of GiB"),
    (["--budget-gib", "-1"], "positive number of GiB"),
    (["--budget-gib", "nan"], "positive number of GiB"),
    (["--budget-gib", "inf"], "positive number of GiB"),
    (["--budget-gib", "lots"], "expected a number of GiB"),
    (["--budget-gib", "1", "--compile-budgets", "1.5"], "must lie in [0, 1]"),
    (["--budget-gib", "1", "--compile-budgets", "x"], "expected comma-separated numbers"),
])
def test_bad_plan_options_are_one_line_and_exit_2(args, message, capsys):
    """argparse's own handling, in-process: usage and one error line, status 2."""
    with pytest.raises(SystemExit) as info:
        main(["plan", "--flavor", "tiny", *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err


def test_an_impossible_budget_is_one_line_naming_the_smallest_feasible():
    proc = subprocess.run([sys.executable, "-m", "ac_bench.report", "plan", "--flavor", "tiny", "--budget-gib", "1e-9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("python -m ac_bench.report plan: error:")]
    assert len(errors) == 1 and "the smallest feasible budget is" in errors[0], proc.stderr


def test_seq_len_reshapes_a_one_gpu_plan_and_the_regenerate_line_repeats_it_exactly(tmp_path, capsys):
    """``--seq-len`` plans at that length (it was ignored without --world-size), the output says so,
    and the Markdown's Regenerate line gives back the exact budget and the length."""
    from ac_bench.cli.common import number
    markdown = tmp_path / "plan.md"
    assert main(["plan", "--flavor", "tiny", "--budget-gib", "0.00100000001", "--seq-len", "64",
                 "--markdown", str(markdown)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny at sequence 64, batch 2 (--seq-len, --batch)\nplan: tiny sdpa"), out
    assert main(["plan", "--flavor", "tiny", "--budget-gib", "0.00100000001"]) == 0
    at_16 = capsys.readouterr().out
    peak = re.compile(r"measured peak [\d.]+ [KMG]iB \((\d+) B")
    assert int(peak.search(out)[1]) > int(peak.search(at_16)[1]), (out, at_16)
    assert ("--budget-gib 0.00100000001 --device cpu --seq-len 64 --markdown" in markdown.read_text()
            and [number(x) for x in (0.45, 80.0, 0.00321456789)] == ["0.45", "80", "0.00321456789"])


def test_a_step_larger_than_this_machine_is_one_line(capsys):
    """The allocator's error (``plan --flavor small --seq-len 1000000`` asked for 16 TB) is one
    line saying what to change; any other RuntimeError is still a traceback (a bug)."""
    from ac_bench.report.load import exit_status

    def alloc():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 16000000000000 bytes. Error code 12")
    assert exit_status("python -m ac_bench.report plan", alloc) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m ac_bench.report plan: error: out of memory measuring a step ([enforce fail")
    assert err.count("\n") == 1 and err.rstrip().endswith("or a flavor traced on fake tensors (seed)"), err

    def bug():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes"):
        exit_status("python -m ac_bench.report plan", bug)


@pytest.mark.parametrize("figure,unit", [(0, "B"), (1023, "B"), (1024, "KiB"), (2 ** 20 - 1, "KiB"), (2 ** 20, "MiB"),
                                         (2 ** 30 - 1, "MiB"), (2 ** 30, "GiB"), (2 ** 50, "GiB")])
def test_a_table_of_bytes_is_in_the_largest_unit_its_largest_figure_fills(figure, unit):
    from ac_bench.outputs import byte_unit
    name, size = byte_unit(figure)
    assert name == unit and size == {"B": 1, "KiB": 1024, "MiB": 2 ** 20, "GiB": 2 ** 30}[unit], (figure, name, size)


@pytest.mark.parametrize("figure,unit", [(0, "FLOP"), (999, "FLOP"), (1000, "kFLOP"), (262144, "kFLOP"),
                                         (1e6, "MFLOP"), (1e9, "GFLOP"), (989.6e12, "TFLOP"), (1e18, "TFLOP")])
def test_a_table_of_flops_is_in_the_largest_decimal_unit_its_largest_figure_fills(figure, unit):
    from ac_bench.outputs import flop_unit
    assert flop_unit(figure)[0] == unit, (figure, flop_unit(figure))


@pytest.mark.parametrize("value,text", [(0, "0 B"), (512, "512 B"), (766480, "748.52 KiB"), (788026948, "751.52 MiB"),
                                        (2 ** 30, "1.00 GiB")])
def test_a_single_byte_figure_is_written_in_the_unit_it_fills(value, text):
    from ac_bench.outputs import bytes_text
    assert bytes_text(value) == text


@pytest.mark.parametrize("value,text", [(0, "0 FLOP"), (262144, "262.14 kFLOP"), (34.36e9, "34.36 GFLOP")])
def test_a_single_flop_figure_is_written_in_the_unit_it_fills(value, text):
    from ac_bench.outputs import flops_text
    assert flops_text(value) == text
