"""The prepared GPU check, on the CPU: argument handling and the summary from a recorded run."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from bench.gpu_check import main
from tests.helpers import ROOT

RECORDED = ROOT / "docs" / "gpu" / "2026-11-28-h200-seed.json"


def test_summary_from_a_recorded_h200_run(tmp_path, capsys):
    shutil.copy(RECORDED, tmp_path / "gpu.json")
    assert main([str(tmp_path), "--summary-only"]) == 0
    text = (tmp_path / "summary.txt").read_text()
    assert "NVIDIA H200" in text and "torch 2.11.0+cu130" in text
    # Every variant of the run, against the committed CPU estimate: full-eager's activation
    # peak was 19.1% above it on the H200, beyond the 10% the suite allows.
    assert text.count("-eager ") >= 5 and text.count("-sdpa ") >= 5
    full_eager = next(line for line in text.splitlines() if line.startswith("full-eager "))
    assert "844,735,488 +19.07%*" in full_eager
    assert "cuda-seed-eager" in text and "time 2.119" in text and "FLOPs 1.251" in text
    assert capsys.readouterr().out == text


@pytest.mark.parametrize(("setup", "args", "message"), [
    (lambda d: (d / "f").write_text(""), ["f", "--summary-only"], "exists and is not a folder"),
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_without_cuda_it_says_so(tmp_path, capsys):
    assert main([str(tmp_path / "out")]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
