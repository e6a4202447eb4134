"""Wiring: command-line options, the device x flavor x variant parametrization, the
measure-once cache, pytest-benchmark's storage, timer, machine info and JSON hooks."""

from __future__ import annotations

import contextlib
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

from bench.attention import SDPA_BACKENDS, check_backend, forced_backend
from bench.baselines import DEFAULT_BASELINES_DIR, BaselineError, BaselineGate
from bench.cases import DEFAULT_FLAVORS, DEVICES, Case, cases, parse_flavor_list, xdist_scope
from bench.device import cuda_available, device_key, device_name, processor_name, timing_key
from bench.outputs import file_problem, folder_problem
from bench.record import OK, Measurement, is_estimate, measure_variant
from bench.timing import CPU_TIMING_THREADS, clock_description, timer_name
from bench.timing_storage import timing_comparison_refusal, timing_storage
from models import FLAVORS, load_family_spec, resolve_dtype

ROOT = Path(__file__).resolve().parent
PYTEST_BENCHMARK_DEFAULT_STORAGE = "file://./.benchmarks"
PYTEST_BENCHMARK_DEFAULT_TIMER = "time.perf_counter"

STORE_KEY = pytest.StashKey["MeasurementStore"]()
GATE_KEY = pytest.StashKey[BaselineGate]()
WRITTEN_KEY = pytest.StashKey[list]()
SDPA_BACKEND_KEY = pytest.StashKey[contextlib.ExitStack]()


#: Lightning's RunIf pattern: device gating as marks, so skips show their reason under -ra.
requires_cuda = pytest.mark.skipif(not cuda_available(), reason="requires CUDA: no CUDA device is available")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("activation checkpointing suite")
    group.addoption("--device", choices=DEVICES, default=None,
                    help="device to measure on (default: cuda when available, else cpu)")
    group.addoption("--flavor", default=None, metavar="NAMES",
                    help="comma-separated flavors to run, from: " + ", ".join(FLAVORS)
                    + "; default: " + "; ".join(f"{d}: {','.join(f)}" for d, f in DEFAULT_FLAVORS.items()))
    group.addoption("--model-spec", action="append", default=[], metavar="MODULE:NAME",
                    help="load a model family defined outside the repository (a models.families.Family, "
                         "e.g. examples.my_family:SPEC; repeatable); without --flavor, its flavors are run")
    group.addoption("--update-baselines", action="store_true", default=False,
                    help="rewrite the deterministic baselines (memory, FLOPs) of the cases that ran, "
                         "keeping the other entries, instead of comparing against them")
    group.addoption("--slow", action="store_true", default=False,
                    help="also run the tests marked slow (sweeps; the README's test command, tox -e gpu "
                         "and the nightly job pass it)")
    group.addoption("--baselines-dir", default=str(DEFAULT_BASELINES_DIR), metavar="DIR",
                    help="folder of per-device baselines (default: %(default)s)")
    group.addoption("--allow-empty-history", action="store_true", default=False,
                    help="with --benchmark-compare and --benchmark-compare-fail: when the benchmark storage holds "
                         "no earlier run for this device key (a first night), skip the timing comparison with a "
                         "message instead of failing; the run is saved as usual (--benchmark-autosave) and the "
                         "comparison gates from the next run on")
    group.addoption("--sdpa-backend", choices=tuple(SDPA_BACKENDS), default=None,
                    help="force SDPA's kernel for the whole session (torch.nn.attention.sdpa_kernel); a usage "
                         "error when it cannot run on the device for a selected flavor. Default: SDPA's own choice, "
                         "recorded per variant as attention_kernel")


def selected_device(config: pytest.Config) -> str:
    return config.getoption("--device") or ("cuda" if cuda_available() else "cpu")


def loaded_families(config: pytest.Config) -> list:
    """The families named by --model-spec, registered (once per process); a bad spec is a
    one-line usage error."""
    families = []
    for spec in config.getoption("--model-spec"):
        try:
            families.append(load_family_spec(spec))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    return families


def selected_flavors(config: pytest.Config) -> tuple:
    text = config.getoption("--flavor")
    if text is None and config.getoption("--model-spec"):
        text = ",".join(f.name for family in loaded_families(config) for f in family.flavors)
    if text is None:
        text = ",".join(DEFAULT_FLAVORS[selected_device(config)])
    try:
        return parse_flavor_list(text)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def selected_device_key(config: pytest.Config) -> str:
    device = selected_device(config)
    return device_key(device) if device == "cpu" or cuda_available() else device


def selected_timing_key(config: pytest.Config) -> str:
    """The key of the timing storage: the GPU's device key, or ``cpu-<processor model>``."""
    device = selected_device(config)
    return timing_key(device) if device == "cpu" or cuda_available() else device


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
        """The case's record, measured on first use. A step that ran out of memory or whose
        loss is not finite fails every test that asks for it, by name, once per test; the
        record stays in the JSON and the other variants are measured as usual."""
        if case.id not in self._records:
            self._records[case.id] = measure_variant(case.flavor, case.variant, case.device)
        record = self._records[case.id]
        if record.outcome != OK:
            pytest.fail(f"{case.id}: {record.outcome}: {record.outcome_note}; its figures cannot be checked "
                        f"or compared with the baselines (the other variants are measured as usual)", pytrace=False)
        return record

    def add_sharded(self, record: Measurement) -> None:
        """A record measured elsewhere: one rank of a sharded run (bench/test_distributed.py's
        torchrun launch), in the JSON as ``{device}-{case_id}-rank{R}``."""
        self._records[f"{record.device_key}-{record.case_id}-rank{record.rank}"] = record

    def local_json(self) -> dict[str, dict]:
        """The records measured in this process, by case id."""
        return {k: r.as_dict() for k, r in self._records.items()}

    def as_json(self) -> list[dict]:
        """Every record of the session, this process's and the workers', sorted by case."""
        merged = {**self.from_workers, **self.local_json()}
        return [merged[k] for k in sorted(merged)]

    def note_time_ratio(self, key: str, time_ratio: float, flop_ratio: float) -> None:
        """Record time(policy)/time(none) beside the FLOP ratio, for the summary and the JSON
        (key ``{device}-{flavor}-{policy}-{attention}``)."""
        self.time_ratios[key] = {"time_ratio": time_ratio, "flop_ratio": flop_ratio}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_tensors: needs real compute; not run for flavors that "
                            "are only estimated on this device (seed on the CPU)")
    config.addinivalue_line("markers", "attention(name): parametrize only the variants with this "
                            "attention implementation")
    config.addinivalue_line("markers", "slow: a sweep too long for the default run of pytest bench/; "
                            "runs with --slow")
    config.addinivalue_line("markers", "timing: a timing test (wall or CPU time): run in one process, not beside "
                            "pytest-xdist workers (make test times them last); skipped when pytest-benchmark is disabled")
    config.addinivalue_line("markers", "distributed: launches torchrun (FSDP2 at world size 2, gloo); "
                            "deselect with -m 'not distributed'")
    if config.pluginmanager.hasplugin("benchmark"):
        config.pluginmanager.register(BenchmarkHooks(), "ac-bench-benchmark-hooks")
    loaded_families(config)  # --model-spec: before any flavor name is read
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
    if not config.getoption("--baselines-dir").strip():
        raise pytest.UsageError("--baselines-dir got an empty path; give the baselines folder "
                                f"(default: {DEFAULT_BASELINES_DIR})")
    if Path(config.getoption("--baselines-dir")).is_file():
        raise pytest.UsageError(f"--baselines-dir {config.getoption('--baselines-dir')} is a file, not a folder; "
                                f"give the folder that holds <device key>/figures.json")
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
    _check_outputs(config)
    _force_sdpa_backend(config)


def _check_outputs(config: pytest.Config) -> None:
    """Every file the run writes at its end, checked before anything is measured: a JSON path in
    a missing or unwritable folder, a baselines folder that --update-baselines cannot write, a
    benchmark storage that --benchmark-save/--benchmark-autosave cannot write would otherwise
    fail after the whole run, and lose it. One usage error, naming the option and the fix."""
    option = config.option
    json_path = getattr(option, "benchmark_json", None)
    if json_path is not None:
        problem = file_problem(json_path)
        if problem:
            raise pytest.UsageError(f"--benchmark-json {json_path}: {problem}")
    if config.getoption("--update-baselines"):
        folder = Path(config.getoption("--baselines-dir")) / selected_device_key(config)
        problem = folder_problem(folder, create=True)
        if problem:
            raise pytest.UsageError(f"--update-baselines cannot write {folder / 'figures.json'}: {problem} "
                                    f"(--baselines-dir)")
    storage = getattr(option, "benchmark_storage", "")
    if (getattr(option, "benchmark_save", None) or getattr(option, "benchmark_autosave", None)) \
            and storage.startswith("file://"):
        problem = folder_problem(Path(storage.removeprefix("file://")), create=True)
        if problem:
            raise pytest.UsageError(f"--benchmark-storage {storage}: the run could not be saved there: {problem}")


def _force_sdpa_backend(config: pytest.Config) -> None:
    """--sdpa-backend: check that the kernel runs for every selected flavor's heads, head
    dimension and dtype on the device, then keep it forced until the session ends."""
    name = config.getoption("--sdpa-backend")
    if name is None:
        return
    device = selected_device(config)
    if device == "cpu" or cuda_available():
        for flavor in selected_flavors(config):
            try:
                check_backend(name, device, resolve_dtype(flavor, device), flavor.n_heads,
                              flavor.d_model // flavor.n_heads)
            except ValueError as exc:
                raise pytest.UsageError(f"{exc} (flavor {flavor.name})") from None
    stack = config.stash[SDPA_BACKEND_KEY] = contextlib.ExitStack()
    stack.enter_context(forced_backend(name))


def pytest_unconfigure(config: pytest.Config) -> None:
    if SDPA_BACKEND_KEY in config.stash:
        config.stash[SDPA_BACKEND_KEY].close()


def _configure_benchmark_storage_and_timer(config: pytest.Config) -> None:
    """Runs before pytest-benchmark's own pytest_configure (which is trylast).

    pytest-benchmark files runs under a machine id that tells neither GPUs nor processor models
    apart, so the storage gets one folder per timing key: committed ``timing_storage(...)`` by
    default, or <user's storage>/<timing key> when --benchmark-storage is given. The timer is
    the device's own (``bench.timing.timer_name``).
    """
    option = config.option
    if not hasattr(option, "benchmark_storage"):
        return  # pytest-benchmark not active (-p no:benchmark)
    key = selected_timing_key(config)
    if option.benchmark_storage == PYTEST_BENCHMARK_DEFAULT_STORAGE:
        storage = timing_storage(Path(config.getoption("--baselines-dir")), selected_device_key(config), key)
        option.benchmark_storage = f"file://{storage}"
    else:
        option.benchmark_storage = option.benchmark_storage.rstrip("/") + f"/{key}"
    if option.benchmark_timer == PYTEST_BENCHMARK_DEFAULT_TIMER:
        option.benchmark_timer = timer_name(selected_device(config))


HISTORY_NOTE_KEY = pytest.StashKey[str]()


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """--allow-empty-history: pytest-benchmark has loaded the stored runs by now (its
    pytest_configure); with none to compare against, --benchmark-compare-fail would end the run
    in a usage error after everything was measured, and a nightly job that saves its history
    only when it passes would never get one. Then the threshold is dropped for this run, saying so."""
    config = session.config
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not config.getoption("--allow-empty-history") or bs.compared_mapping:
        return
    if bs.compare is True and bs.compare_fail:
        config.stash[HISTORY_NOTE_KEY] = (
            f"benchmark history: no earlier run in {bs.storage} for device key {selected_device_key(config)!r}, "
            f"so the timings were not compared (--benchmark-compare-fail skipped, --allow-empty-history); "
            f"{'this run was saved and is' if bs.save or bs.autosave else 'save a run (--benchmark-autosave) to make it'} "
            f"the reference of the next one")
        bs.compare_fail = []


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
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` on CUDA: one worker per visible GPU (each binds its own, see
    ``bench.device.bind_xdist_worker_gpu``), not one per CPU core, which would put several
    workers' allocators on one GPU. On the CPU, pytest-xdist's own count (the cores)."""
    if config.getoption("--device") == "cpu":
        return None
    from bench.device import visible_gpus
    return len(visible_gpus()) or None


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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    """The baselines first: outermost, before pytest-benchmark's own sessionfinish writes its
    JSON and storage, so that a failure there cannot lose an update."""
    config = session.config
    if GATE_KEY in config.stash and config.getoption("--update-baselines"):
        try:
            config.stash[WRITTEN_KEY] = config.stash[GATE_KEY].write_staged()
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
    if STORE_KEY in config.stash:
        store = config.stash[STORE_KEY]
        if hasattr(config, "workeroutput"):  # an xdist worker: hand the records to the controller
            config.workeroutput["ac_measurements"] = store.local_json()
            config.workeroutput["ac_time_ratios"] = store.time_ratios
        else:
            _write_json_without_timings(config)
    return (yield)


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
            "processor": processor_name(),
            "timing_key": selected_timing_key(config),
            "timer": str(config.getoption("benchmark_timer")),
            "clock": clock_description(device),
            "timing_threads": CPU_TIMING_THREADS if device == "cpu" else None,
            "dtypes": {f.name: str(resolve_dtype(f, device)).removeprefix("torch.")
                       for f in selected_flavors(config)},
        }

    @staticmethod
    def pytest_benchmark_compare_machine_info(config: pytest.Config, benchmarksession, machine_info: dict,
                                              compared_benchmark: dict) -> None:
        """Refuse, in one line, to compare timings of different device keys (a GPU against the
        CPU, or another GPU), of different processor models, or taken with another timer or
        thread count: each is a different clock, not a regression."""
        refusal = timing_comparison_refusal(machine_info, compared_benchmark)
        if refusal:
            raise pytest.UsageError(f"--benchmark-compare: {refusal}")

    @staticmethod
    def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
        """Every case measured this session, timed or not, as one record each."""
        store = config.stash[STORE_KEY]
        output_json["measurements"] = store.as_json()
        output_json["time_ratios"] = dict(sorted(store.time_ratios.items()))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if HISTORY_NOTE_KEY in config.stash:
        terminalreporter.write_line(config.stash[HISTORY_NOTE_KEY], yellow=True)
    if GATE_KEY in config.stash:
        for line in config.stash[GATE_KEY].repairs:
            terminalreporter.write_line(f"baselines repaired: {line}")
    for path in config.stash.get(WRITTEN_KEY, []):
        terminalreporter.write_line(f"baselines written: {path}")
    ratios = config.stash[STORE_KEY].time_ratios if STORE_KEY in config.stash else {}
    if ratios:
        terminalreporter.section("recompute cost: time(policy)/time(none) against FLOPs(policy)/FLOPs(none)")
        for key, r in sorted(ratios.items()):
            deviation = r["time_ratio"] / r["flop_ratio"] - 1
            terminalreporter.write_line(f"{key:32} time ratio {r['time_ratio']:.3f}   FLOP ratio {r['flop_ratio']:.3f}"
                                        f"   deviation {deviation:+.1%}")
