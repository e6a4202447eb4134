"""The torch range the suite declares is the one it is run under: pyproject's lower bound is
tox's torch-oldest, and each torch environment runs the default run without timing."""

from __future__ import annotations

import configparser
import re

from tests.helpers import ROOT


def test_the_declared_oldest_torch_is_the_one_tox_runs():
    (lower,) = re.findall(r'^\s*"torch>=([^"]+)",$', (ROOT / "pyproject.toml").read_text(), re.M)
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    pins = {env: re.search(r"^torch==(\S+)$", tox[f"testenv:{env}"]["deps"], re.M).group(1)
            for env in ("torch-oldest", "torch-newest")}
    assert pins["torch-oldest"].startswith(lower) and pins["torch-newest"] > pins["torch-oldest"], (pins, lower)
    for env in pins:
        assert tox[f"testenv:{env}"]["commands"].strip() == "pytest bench/ --benchmark-skip {posargs}", env
