"""Wiring: command-line options, the device x flavor x variant parametrization, the
measure-once cache, pytest-benchmark's storage, timer, machine info and JSON hooks."""

from __future__ import annotations

import os
from pathlib import Path

# Deterministic cuBLAS for the gradient checks (torch.use_deterministic_algorithms raises
# without it); must be set before CUDA starts. A user's own setting wins.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# Under pytest-xdist each worker binds its own GPU (CUDA_VISIBLE_DEVICES), before anything
# initialises CUDA; on a CPU machine nothing changes. bench.device imports torch, which does
# not initialise CUDA.
from bench.device import bind_xdist_worker_gpu  # noqa: E402

bind_xdist_worker_gpu()

import pytest  # noqa: E402
import torch  # noqa: E402

from bench.baselines import DEFAULT_BASELINES_DIR, BaselineError, BaselineGate
from bench.cases import DEFAULT_FLAVORS, DEVICES, Case, cases, parse_flavor_list, xdist_scope
from bench.device import cuda_available, device_key, device_name
from bench.record import Measurement, is_estimate, measure_variant
from bench.timing import TIMER_NAME
from models import FLAVORS, resolve_dtype

ROOT = Path(__file__).resolve().parent
PYTEST_BENCHMARK_DEFAULT_STORAGE = "file://./.benchmarks"
PYTEST_BENCHMARK_DEFAULT_TIMER = "time.perf_counter"

STORE_KEY = pytest.StashKey["MeasurementStore"]()
GATE_KEY = pytest.StashKey[BaselineGate]()
WRITTEN_KEY = pytest.StashKey[list]()


#: Lightning's RunIf pattern: device gating as marks, so skips show their reason under -ra.
requires_cuda = pytest.mark.skipif(not cuda_available(), reason="requires CUDA: no CUDA device is available")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("activation checkpointing suite")
    group.addoption("--device", choices=DEVICES, default=None,
                    help="device to measure on (default: cuda when available, else cpu)")
    group.addoption("--flavor", default=None, metavar="NAMES",
                    help="comma-separated flavors to run, from: " + ", ".join(FLAVORS)
                    + "; default: " + "; ".join(f"{d}: {','.join(f)}" for d, f in DEFAULT_FLAVORS.items()))
    group.addoption("--update-baselines", action="store_true", default=False,
                    help="rewrite the deterministic baselines (memory, FLOPs) of the cases that ran, "
                         "keeping the other entries, instead of comparing against them")
    group.addoption("--slow", action="store_true", default=False,
                    help="also run the tests marked slow (sweeps; the README's test command, tox -e gpu "
                         "and the nightly job pass it)")
    group.addoption("--baselines-dir", default=str(DEFAULT_BASELINES_DIR), metavar="DIR",
                    help="folder of per-device baselines (default: %(default)s)")


def selected_device(config: pytest.Config) -> str:
    return config.getoption("--device") or ("cuda" if cuda_available() else "cpu")


def selected_flavors(config: pytest.Config) -> tuple:
    text = config.getoption("--flavor")
    if text is None:
        text = ",".join(DEFAULT_FLAVORS[selected_device(config)])
    try:
        return parse_flavor_list(text)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def selected_device_key(config: pytest.Config) -> str:
    device = selected_device(config)
    return device_key(device) if device == "cpu" or cuda_available() else device


class MeasurementStore:
    """Session cache: each case is measured once; every test and the JSON read the record.

    Under pytest-xdist each worker measures its own cases and sends their records to the
    controller, which writes them to the JSON (``from_workers``).
    """

    def __init__(self) -> None:
        self._records: dict[str, Measurement] = {}
        self.from_workers: dict[str, dict] = {}
        self.time_ratios: dict[str, dict[str, float]] = {}

    def get(self, case: Case) -> Measurement:
        if case.id not in self._records:
            self._records[case.id] = measure_variant(case.flavor, case.variant, case.device)
        return self._records[case.id]

    def local_json(self) -> dict[str, dict]:
        """The records measured in this process, by case id."""
        return {k: r.as_dict() for k, r in self._records.items()}

    def as_json(self) -> list[dict]:
        """Every record of the session, this process's and the workers', sorted by case."""
        merged = {**self.from_workers, **self.local_json()}
        return [merged[k] for k in sorted(merged)]

    def note_time_ratio(self, key: str, time_ratio: float, flop_ratio: float) -> None:
        """Record time(full)/time(none) beside the FLOP ratio, for the summary and the JSON."""
        self.time_ratios[key] = {"time_ratio": time_ratio, "flop_ratio": flop_ratio}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_tensors: needs real compute; not run for flavors that "
                            "are only estimated on this device (seed on the CPU)")
    config.addinivalue_line("markers", "attention(name): parametrize only the variants with this "
                            "attention implementation")
    config.addinivalue_line("markers", "slow: a sweep too long for the default run of pytest bench/; "
                            "runs with --slow")
    config.addinivalue_line("markers", "timing: a wall-clock timing test, skipped when pytest-benchmark is disabled")
    if config.pluginmanager.hasplugin("benchmark"):
        config.pluginmanager.register(BenchmarkHooks(), "ac-bench-benchmark-hooks")
    selected_flavors(config)  # fail early on a bad --flavor
    # One variant's tests on one worker (CaseScheduling): -n alone means --dist load, which
    # becomes loadgroup; an explicit other --dist is kept.
    if config.getoption("numprocesses", None) and config.getoption("dist", "no") == "load" \
            and "--dist" not in " ".join(config.invocation_params.args):
        config.option.dist = "loadgroup"
    if config.getoption("--update-baselines") and (
            config.getoption("numprocesses", None) or config.getoption("dist", "no") != "no"):
        raise pytest.UsageError("--update-baselines cannot be combined with pytest-xdist (-n): "
                                "run it in one process so the baselines file is written once")
    config.stash[STORE_KEY] = MeasurementStore()
    gate = config.stash[GATE_KEY] = BaselineGate(Path(config.getoption("--baselines-dir")))
    # The baselines file is validated once, before anything is measured: a broken file fails
    # the run with one message, also under --update-baselines (which would otherwise keep it).
    try:
        existing = gate.file_for(selected_device_key(config))
    except BaselineError as exc:
        raise pytest.UsageError(str(exc)) from None
    if existing and existing.missing_tolerances() and not config.getoption("--update-baselines"):
        raise pytest.UsageError(
            f"{existing.path}: no tolerance for {', '.join(existing.missing_tolerances())}, so the gate cannot "
            f"compare them; rerun with --update-baselines, which adds the default tolerance and the figures")
    _configure_benchmark_storage_and_timer(config)


def _configure_benchmark_storage_and_timer(config: pytest.Config) -> None:
    """Runs before pytest-benchmark's own pytest_configure (which is trylast).

    pytest-benchmark files runs under a machine id that does not tell GPUs apart, so the
    storage gets one folder per device key: committed baselines/<key>/timing by default,
    or <user's storage>/<key> when --benchmark-storage is given.
    """
    option = config.option
    if not hasattr(option, "benchmark_storage"):
        return  # pytest-benchmark not active (-p no:benchmark)
    key = selected_device_key(config)
    if option.benchmark_storage == PYTEST_BENCHMARK_DEFAULT_STORAGE:
        option.benchmark_storage = f"file://{Path(config.getoption('--baselines-dir')) / key / 'timing'}"
    else:
        option.benchmark_storage = option.benchmark_storage.rstrip("/") + f"/{key}"
    if option.benchmark_timer == PYTEST_BENCHMARK_DEFAULT_TIMER:
        option.benchmark_timer = TIMER_NAME


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    device = selected_device(config)
    flavors = selected_flavors(config)
    if metafunc.definition.get_closest_marker("real_tensors"):
        flavors = tuple(f for f in flavors if not is_estimate(f, device))
    marks = [requires_cuda] if device == "cuda" else []
    attention = metafunc.definition.get_closest_marker("attention")
    if "case" in metafunc.fixturenames:
        chosen = [c for c in cases(device, flavors) if attention is None or c.attention == attention.args[0]]
        params = [pytest.param(c, id=c.id, marks=marks) for c in chosen]
        metafunc.parametrize("case", params)
    if "flavor_on_device" in metafunc.fixturenames:
        params = [pytest.param((device, f), id=f"{device}-{f.name}", marks=marks) for f in flavors]
        metafunc.parametrize("flavor_on_device", params)
    if "plan_budget" in metafunc.fixturenames:
        # The module declares its budgets per flavor (bench/test_planner.py: budgets_for).
        params = [pytest.param((device, f, attention, budget), id=f"{device}-{f.name}-{attention}-{budget}",
                               marks=[*marks, *extra])
                  for f in flavors for attention, budget, extra in metafunc.module.budgets_for(f)]
        metafunc.parametrize("plan_budget", params)
    if "cuda_case" in metafunc.fixturenames:
        # Always parametrized on cuda, so on a CPU machine they show as skipped with the reason.
        cuda_flavors = tuple(f for f in flavors if f.cpu_mode == "estimate") or flavors
        cuda_marks = [requires_cuda]
        if config.getoption("--device") == "cpu":
            cuda_marks.append(pytest.mark.skip(reason="CUDA-only test, and --device cpu was given"))
        params = [pytest.param(c, id=c.id, marks=cuda_marks) for c in cases("cuda", cuda_flavors)]
        metafunc.parametrize("cuda_case", params)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """--dist loadgroup (what -n means here): pytest-xdist's LoadGroupScheduling, grouping by
    ``bench.cases.xdist_scope`` (one case's tests, or a module's shared launch) instead of by the
    ``@group`` suffix that xdist 3.8 writes into nodeids, which pytest 9.2 no longer reads back
    (``Node.nodeid`` comes from ``_id``; xdist sets ``_nodeid``), so xdist_group marks alone
    group nothing."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class CaseScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid) or super()._split_scope(nodeid)

    return CaseScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if not config.getoption("--slow"):
        slow = pytest.mark.skip(reason="slow: runs with --slow (make test, tox -e gpu and the nightly job pass it)")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(slow)
    if not config.pluginmanager.hasplugin("benchmark"):
        skip = pytest.mark.skip(reason="pytest-benchmark is disabled (-p no:benchmark): timing tests do not run")
        for item in items:
            if item.get_closest_marker("timing"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def measurements(request: pytest.FixtureRequest) -> MeasurementStore:
    """The session's measure-once cache."""
    return request.config.stash[STORE_KEY]


@pytest.fixture(scope="session")
def session_device(request: pytest.FixtureRequest) -> str:
    """The device this session measures on (``--device``, default cuda when available)."""
    return selected_device(request.config)


@pytest.fixture(scope="session")
def baseline_gate(request: pytest.FixtureRequest) -> BaselineGate:
    return request.config.stash[GATE_KEY]


@pytest.fixture(scope="session")
def update_baselines(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-baselines"))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist controller: collect a finished worker's records."""
    store = node.config.stash.get(STORE_KEY, None)
    if store is not None:
        store.from_workers.update(node.workeroutput.get("ac_measurements", {}))
        store.time_ratios.update(node.workeroutput.get("ac_time_ratios", {}))


def _write_json_without_timings(config: pytest.Config) -> None:
    """pytest-benchmark writes no --benchmark-json when no benchmark ran (only estimated
    flavors, --benchmark-skip, or xdist, which disables benchmarks); the measurements still
    belong in it, so write it through pytest-benchmark's own hooks."""
    bs = getattr(config, "_benchmarksession", None)
    store = config.stash[STORE_KEY]
    if bs is None or not getattr(bs, "json", None) or bs.benchmarks or not store.as_json():
        return
    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    config.hook.pytest_benchmark_update_commit_info(config=config, commit_info=commit_info)
    output_json = config.hook.pytest_benchmark_generate_json(
        config=config, benchmarks=[], include_data=True, machine_info=bs.get_machine_info(),
        commit_info=commit_info)
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=[], output_json=output_json)
    bs.save_json(output_json)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if STORE_KEY not in config.stash:
        return
    store = config.stash[STORE_KEY]
    if hasattr(config, "workeroutput"):  # an xdist worker: hand the records to the controller
        config.workeroutput["ac_measurements"] = store.local_json()
        config.workeroutput["ac_time_ratios"] = store.time_ratios
    else:
        _write_json_without_timings(config)
    if GATE_KEY in config.stash and config.getoption("--update-baselines"):
        try:
            config.stash[WRITTEN_KEY] = config.stash[GATE_KEY].write_staged()
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None


class BenchmarkHooks:
    """pytest-benchmark's hooks, registered only when the plugin is active (``-p no:benchmark``
    would otherwise make them unknown hooks: an INTERNALERROR)."""

    @staticmethod
    def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
        device = selected_device(config)
        on_cuda = device == "cuda" and cuda_available()
        machine_info["torch"] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "device": device,
            "device_key": selected_device_key(config),
            "device_name": device_name(device) if on_cuda else "cpu",
            "dtypes": {f.name: str(resolve_dtype(f, device)).removeprefix("torch.")
                       for f in selected_flavors(config)},
        }

    @staticmethod
    def pytest_benchmark_compare_machine_info(config: pytest.Config, benchmarksession, machine_info: dict,
                                              compared_benchmark: dict) -> None:
        """Refuse to compare timings across device keys (a GPU against the CPU, or another GPU)."""
        saved = compared_benchmark.get("machine_info", {}).get("torch", {}).get("device_key")
        current = machine_info.get("torch", {}).get("device_key")
        if saved != current:
            raise pytest.UsageError(
                f"--benchmark-compare: the stored run was measured on device key {saved!r}, this run is on "
                f"{current!r}; timings of different devices are not comparable. Point --benchmark-storage at "
                f"this device's history (default: baselines/<device key>/timing).")

    @staticmethod
    def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
        """Every case measured this session, timed or not, as one record each."""
        store = config.stash[STORE_KEY]
        output_json["measurements"] = store.as_json()
        output_json["time_ratios"] = dict(sorted(store.time_ratios.items()))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if GATE_KEY in config.stash:
        for line in config.stash[GATE_KEY].repairs:
            terminalreporter.write_line(f"baselines repaired: {line}")
    for path in config.stash.get(WRITTEN_KEY, []):
        terminalreporter.write_line(f"baselines written: {path}")
    ratios = config.stash[STORE_KEY].time_ratios if STORE_KEY in config.stash else {}
    if ratios:
        terminalreporter.section("recompute cost: time(full)/time(none) against FLOPs(full)/FLOPs(none)")
        for key, r in sorted(ratios.items()):
            terminalreporter.write_line(f"{key:28} time ratio {r['time_ratio']:.3f}   FLOP ratio {r['flop_ratio']:.3f}")
