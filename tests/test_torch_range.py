"""The torch range the suite declares is the one it is run under: pyproject's lower bound is
tox's torch-oldest, and each torch environment runs the default run without timing (the oldest
without the estimate at scale, which refuses a torch that old)."""

from __future__ import annotations

import configparser
import re

from ac_bench.scale import estimate_torch_problem
from tests.helpers import ROOT


def test_the_declared_oldest_torch_is_the_one_tox_runs():
    (lower,) = re.findall(r'^\s*"torch>=([^"]+)",$', (ROOT / "pyproject.toml").read_text(), re.M)
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    pins = {env: re.search(r"^torch==(\S+)$", tox[f"testenv:{env}"]["deps"], re.M).group(1)
            for env in ("torch-oldest", "torch-newest")}
    assert pins["torch-oldest"].startswith(lower) and pins["torch-newest"] > pins["torch-oldest"], (pins, lower)
    assert tox["testenv:torch-newest"]["commands"].strip() == "pytest bench/ --benchmark-skip {posargs}"
    # The oldest leaves out only the estimate at scale, which refuses it (and only while it does).
    assert estimate_torch_problem(pins["torch-oldest"]) is not None
    assert estimate_torch_problem(pins["torch-newest"]) is None
    assert tox["testenv:torch-oldest"]["commands"].strip() == (
        'pytest bench/ --benchmark-skip --ignore=bench/test_scale.py -k "not test_the_estimate_equals_the_launch" '
        '{posargs}')
