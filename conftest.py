"""Registers the suite's pytest plugin, ``ac_bench.plugin`` (options, parametrization, the
measure-once session, the baselines gate, the pytest-benchmark and pytest-xdist adapters), for
``pytest bench/`` and the self-tests in ``tests/``. The library must be installed in the
Python that runs pytest (``pip install -e .``; ``make bench`` and ``make test`` do it)."""

import importlib.util

if importlib.util.find_spec("ac_bench") is None:
    raise SystemExit("ac_bench is not installed in this Python: run `pip install -e .` in the repository "
                     "(make bench and make test do it, in .venv)")

# pytester: the self-tests that need pytest itself run it in-process (tests/test_plugin.py).
pytest_plugins = ["ac_bench.plugin", "pytester"]
