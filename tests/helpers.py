"""Running the suite in a subprocess, as a user would."""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m pytest ARGS`` in the repository root; output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def tox_gpu_phases() -> list[list[str]]:
    """The pytest commands of ``tox -e gpu`` (tox.ini), in order, each split into words after
    ``pytest``, with the CPU and the tiny flavor in place of CUDA and seed (``{posargs}`` and
    ``{env:...}`` left for the caller to substitute)."""
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    lines = [line for line in tox["testenv:gpu"]["commands"].splitlines() if line.startswith("pytest ")]
    return [[{"cuda": "cpu", "seed": "tiny"}.get(word, word) for word in shlex.split(line)[1:]] for line in lines]
