"""The pytest-xdist adapter: every use of pytest-xdist's internals is here.

``-n`` means ``--dist loadgroup`` scheduled by case: pytest-xdist's ``LoadGroupScheduling``
with its private ``_split_scope`` overridden to group by ``ac_bench.cases.xdist_scope`` (one
case's tests, or a module's shared launch) instead of by the ``@group`` suffix that xdist 3.8
writes into nodeids, which pytest 9.2 no longer reads back (``Node.nodeid`` comes from ``_id``;
xdist sets ``_nodeid``), so xdist_group marks alone group nothing. The version this was written
against is pinned wherever the suite is installed; another that lacks ``_split_scope`` fails
once with one line."""

from __future__ import annotations

import pytest

from ac_bench.cases import xdist_scope
from ac_bench.probes.device import visible_gpus

TESTED_VERSION = "3.8.0"
#: The ini option (pyproject.toml's [tool.pytest.ini_options]) listing the modules whose tests
#: share one expensive launch (a module-scoped fixture), so that one worker runs them together.
SHARED_LAUNCH_INI = "ac_bench_shared_launch_modules"


def requested(config: pytest.Config) -> bool:
    """Whether the run uses pytest-xdist workers (``-n`` or ``--dist``)."""
    return bool(config.getoption("numprocesses", None) or config.getoption("dist", "no") != "no")


def use_loadgroup(config: pytest.Config) -> None:
    """``-n`` alone means ``--dist load``, which becomes loadgroup (one case per worker); an
    explicit other ``--dist`` is kept."""
    if config.getoption("numprocesses", None) and config.getoption("dist", "no") == "load" \
            and "--dist" not in " ".join(config.invocation_params.args):
        config.option.dist = "loadgroup"


def auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` on CUDA: one worker per visible GPU (each binds its own, see
    ``ac_bench.probes.device.bind_xdist_worker_gpu``), not one per CPU core, which would put
    several workers' allocators on one GPU. On the CPU, pytest-xdist's own count (the cores)."""
    if config.getoption("--device") == "cpu":
        return None
    return len(visible_gpus()) or None


def add_ini(parser: pytest.Parser) -> None:
    """``SHARED_LAUNCH_INI``: read on the controller, which collects no tests."""
    parser.addini(SHARED_LAUNCH_INI, type="linelist", default=[],
                  help="test modules (paths relative to the rootdir), or path::function, whose tests pytest-xdist "
                       "runs on one worker")


def make_scheduler(config: pytest.Config, log):
    """The case-grouping scheduler under --dist loadgroup; None (xdist's own) otherwise."""
    if config.getvalue("dist") != "loadgroup":
        return None
    shared_modules = tuple(config.getini(SHARED_LAUNCH_INI))
    from xdist.scheduler import LoadGroupScheduling

    if not hasattr(LoadGroupScheduling, "_split_scope"):
        from importlib.metadata import version
        raise pytest.UsageError(f"pytest-xdist {version('pytest-xdist')}: LoadGroupScheduling has no _split_scope, "
                                f"which this suite overrides to run one case per worker; install "
                                f"pytest-xdist=={TESTED_VERSION} (requirements-cpu.txt, tox.ini)")

    class CaseScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid, shared_modules) or super()._split_scope(nodeid)

    return CaseScheduling(config, log)


def hand_to_controller(config: pytest.Config, records: dict, time_ratios: dict) -> bool:
    """On a worker: put its records into ``workeroutput`` for the controller; False elsewhere."""
    if not hasattr(config, "workeroutput"):
        return False
    config.workeroutput["ac_measurements"] = records
    config.workeroutput["ac_time_ratios"] = time_ratios
    return True


def from_worker(node) -> tuple[dict, dict]:
    """On the controller: a finished worker's records and time ratios."""
    output = getattr(node, "workeroutput", {})
    return output.get("ac_measurements", {}), output.get("ac_time_ratios", {})
