"""The prepared GPU check, on the CPU: argument handling and the summary from a recorded run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from ac_bench.cli.gpu_check import main
from tests.helpers import ROOT

RECORDED = ROOT / "docs" / "gpu" / "2026-11-28-h200-seed-policies.json"


def test_summary_from_a_recorded_h200_run(tmp_path, capsys):
    shutil.copy(RECORDED, tmp_path / "gpu.json")
    assert main([str(tmp_path), "--summary-only"]) == 0
    text = (tmp_path / "summary.txt").read_text()
    assert "NVIDIA H200" in text and "torch 2.11.0+cu130" in text
    # Every variant of the run against the committed CPU estimate: full-eager's activation
    # peak is 19.1% above it, which is the CUDA softmax backward's extra buffer (allowed).
    rows = [line.split()[0] for line in text.splitlines()
            if line[:1].isalpha() and line.split()[0].endswith(("-eager", "-sdpa"))]
    assert len(rows) == 20
    full_eager = next(line for line in text.splitlines() if line.startswith("full-eager "))
    assert "277,938,176  +0.39% " in full_eager and "844,735,488 +19.07% " in full_eager
    assert "figures beyond tolerance: 0" in text
    assert "cuda-seed-eager" in text and "time 1.822" in text and "FLOPs 1.251" in text
    assert capsys.readouterr().out == text


def test_the_summary_names_the_kernel_each_variant_used(tmp_path):
    """From the record's attention_kernel; the recorded H200 run predates it (schema 2): `-`."""
    data = json.loads(RECORDED.read_text())
    for r in data["measurements"]:
        if r["variant"] == "full-sdpa":
            r["attention_kernel"] = "cudnn"
    (tmp_path / "gpu.json").write_text(json.dumps(data))
    assert main([str(tmp_path), "--summary-only"]) == 0
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert next(line for line in lines if line.startswith("full-sdpa ")).endswith("  cudnn")
    assert next(line for line in lines if line.startswith("full-eager ")).endswith("  -")


def test_a_figure_beyond_the_suites_tolerance_is_flagged(tmp_path):
    data = json.loads(RECORDED.read_text())
    record = next(r for r in data["measurements"] if r["variant"] == "full-eager")
    record["activation_peak_bytes"] += 200 * 2 ** 20  # more than the softmax buffer explains
    (tmp_path / "gpu.json").write_text(json.dumps(data))
    assert main([str(tmp_path), "--summary-only"]) == 0
    text = (tmp_path / "summary.txt").read_text()
    assert "figures beyond tolerance: 1" in text
    assert "%*" in next(line for line in text.splitlines() if line.startswith("full-eager "))


@pytest.mark.parametrize(("setup", "args", "message"), [
    (lambda d: (d / "f").write_text(""), ["f", "--summary-only"], "exists and is not a folder"),
    (lambda d: (d / "f").write_text(""), ["f/out", "--summary-only"], "is a file, not a folder"),
    (lambda d: None, ["empty", "--summary-only"], "gpu.json: no such file"),
    (lambda d: (d / "bad").mkdir() or (d / "bad" / "gpu.json").write_text("{"), ["bad", "--summary-only"], "not readable JSON"),
    (lambda d: (d / "old").mkdir() or (d / "old" / "gpu.json").write_text("{}"), ["old", "--summary-only"], "no 'measurements'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, setup, args, message):
    setup(tmp_path)
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check"), *[str(tmp_path / args[0]), *args[1:]]],
                            capture_output=True, text=True, cwd=ROOT, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_relative_outdir_is_the_callers_not_the_repositorys(tmp_path):
    """``scripts/gpu-check relout --summary-only`` run from another folder writes there (it made
    ``relout/`` in the repository before, since the script runs in the repository)."""
    (tmp_path / "relout").mkdir()
    shutil.copy(RECORDED, tmp_path / "relout" / "gpu.json")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check"), "relout", "--summary-only"],
                            capture_output=True, text=True, cwd=tmp_path, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "NVIDIA H200" in (tmp_path / "relout" / "summary.txt").read_text()
    assert not (ROOT / "relout").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_without_cuda_it_says_so(tmp_path, capsys):
    assert main([str(tmp_path / "out")]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
