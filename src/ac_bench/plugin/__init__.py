"""The suite's pytest plugin: options, configure-time validation, the device x flavor x
variant parametrization, the session that measures each case once and gates it, and the
pytest-benchmark and pytest-xdist adapters (``benchmark``, ``xdist``: the only modules that
touch those plugins' internals).

Registered by the repository's ``conftest.py`` (``pytest_plugins = ["ac_bench.plugin"]``), or
by ``pytest -p ac_bench.plugin`` anywhere the package is installed. The hooks here only
delegate to plain functions of ``options``, ``session``, ``parametrize``, ``benchmark`` and
``xdist``, which the self-tests call directly.
"""

from __future__ import annotations

import contextlib
import os

# Deterministic cuBLAS for the gradient checks (torch.use_deterministic_algorithms raises
# without it); must be set before CUDA starts. A user's own setting wins.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# Under pytest-xdist each worker binds its own GPU (CUDA_VISIBLE_DEVICES), before anything
# initialises CUDA; on a CPU machine nothing changes. Importing torch does not initialise CUDA.
# Each worker also takes its share of the cores (torch threads and OMP_NUM_THREADS).
from ac_bench.probes.device import bind_xdist_worker_gpu, share_cores_among_xdist_workers  # noqa: E402

try:
    share_cores_among_xdist_workers()
    bind_xdist_worker_gpu()
    _ENVIRONMENT_PROBLEM = None
except ValueError as _exc:  # a malformed PYTEST_XDIST_WORKER: one line at configure time, not a traceback here
    _ENVIRONMENT_PROBLEM = f"{_exc}: unset it, or run under pytest-xdist, which sets it"

import pytest  # noqa: E402

from ac_bench.gate.baselines import DEFAULT_BASELINES_DIR, BaselineError, BaselineGate  # noqa: E402
from ac_bench.models import resolve_dtype  # noqa: E402
from ac_bench.plugin import benchmark, parametrize, xdist  # noqa: E402
from ac_bench.plugin.options import (  # noqa: E402
    accept_options,
    add_options,
    baselines_dir,
    check_family_builds,
    check_outputs,
    loaded_families,
    only_user_families,
    selected_device,
    selected_device_key,
    selected_flavors,
    suite_path,
)
from ac_bench.plugin.session import MeasurementStore  # noqa: E402
from ac_bench.probes.attention import check_backend, forced_backend  # noqa: E402
from ac_bench.probes.device import cuda_available  # noqa: E402

STORE_KEY = pytest.StashKey[MeasurementStore]()
GATE_KEY = pytest.StashKey[BaselineGate]()
WRITTEN_KEY = pytest.StashKey[list]()
SDPA_BACKEND_KEY = pytest.StashKey[contextlib.ExitStack]()
HISTORY_NOTE_KEY = pytest.StashKey[str]()
COMPARED_NOTHING_KEY = pytest.StashKey[str]()
COMPARED_PARTLY_KEY = pytest.StashKey[str]()
LOOSE_TOLERANCES_KEY = pytest.StashKey[list]()

MARKERS = (
    "real_tensors: needs real compute; not run for flavors that are only estimated on this device (seed on the CPU)",
    "attention(name): parametrize only the variants with this attention implementation",
    "slow: a sweep too long for the default run of pytest bench/; runs with --slow",
    "timing: a timing test (wall or CPU time): run in one process, not beside pytest-xdist workers "
    "(make test times them last); skipped when pytest-benchmark is disabled",
    "gate: the deterministic figures against the committed baselines (pytest bench/ -m gate)",
    "distributed: launches torchrun (FSDP2 at world size 2, gloo); deselect with -m 'not distributed'",
    "growth_all: the memory-growth check at a flavor other than its family's cheapest (also slow); "
    "make test leaves it out (-m 'not growth_all') to keep CI within its time, tox -e cpu runs it",
    "deep: a slow check or self-test that make test leaves out (-m 'not deep') to keep CI within its 20 "
    "minutes: the larger at-scale gates, the MILP against brute force at small, the planner's figures at "
    "small, a few end-to-end self-tests; tox -e cpu and the nightly job run it",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    xdist.add_ini(parser)


def pytest_configure(config: pytest.Config) -> None:
    if _ENVIRONMENT_PROBLEM:
        raise pytest.UsageError(_ENVIRONMENT_PROBLEM)
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    store = config.stash[STORE_KEY] = MeasurementStore()
    if benchmark.active(config):
        config.pluginmanager.register(benchmark.BenchmarkHooks(store), "ac-bench-benchmark-hooks")
    loaded_families(config)  # --model-spec: before any flavor name is read
    selected_flavors(config)  # fail early on a bad --flavor
    if config.getoption("--device") == "cuda" and not cuda_available():  # not a green run of skips
        import torch
        raise pytest.UsageError(f"--device cuda: torch {torch.__version__} sees no CUDA device here; leave --device "
                                f"out to run on the CPU, or run where a GPU and a CUDA build of torch are")
    check_family_builds(config)  # and on a --model-spec family that cannot build its model
    xdist.use_loadgroup(config)
    if config.getoption("--update-baselines") and xdist.requested(config):
        raise pytest.UsageError("--update-baselines cannot be combined with pytest-xdist (-n): "
                                "run it in one process so the baselines file is written once")
    config.stash[GATE_KEY] = open_baselines(config)
    benchmark.configure_storage_and_timer(config)
    check_outputs(config)
    force_sdpa_backend(config)


def open_baselines(config: pytest.Config) -> BaselineGate:
    """The gate over ``--baselines-dir``. The device's file is validated once, before anything
    is measured: a broken file fails the run with one message, also under --update-baselines
    (which would otherwise keep it); a missing tolerance too, unless the update adds it."""
    gate = BaselineGate(baselines_dir(config), suite=suite_path(config), options=accept_options(config),
                        default_directory=config.rootpath / DEFAULT_BASELINES_DIR)
    try:
        existing = gate.file_for(selected_device_key(config))
    except BaselineError as exc:
        raise pytest.UsageError(str(exc)) from None
    if existing and existing.missing_tolerances() and not config.getoption("--update-baselines"):
        raise pytest.UsageError(
            f"{existing.path}: no tolerance for {', '.join(existing.missing_tolerances())}, so the gate cannot "
            f"compare them; rerun with --update-baselines, which adds the default tolerance and the figures")
    if existing:  # loosened by hand: not refused (a user may mean it), never silent
        config.stash[LOOSE_TOLERANCES_KEY] = existing.looser_tolerances()
    return gate


def force_sdpa_backend(config: pytest.Config) -> None:
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
    benchmark.remove_empty_storage(config)  # pytest --help has no session to remove them at
    if SDPA_BACKEND_KEY in config.stash:
        config.stash[SDPA_BACKEND_KEY].close()


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    benchmark.check_version(session.config)
    benchmark.remove_empty_storage(session.config)
    refusal = (benchmark.compare_refusal(session.config) or benchmark.empty_history_refusal(session.config)
               or benchmark.other_flavor_refusal(session.config))
    if refusal:  # before anything is measured, not after
        raise pytest.UsageError(refusal)
    note = benchmark.drop_compare_fail_without_history(session.config)
    if note:
        session.config.stash[HISTORY_NOTE_KEY] = note
    benchmark.regressions_without_traceback(session.config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize.generate(metafunc)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    return xdist.auto_num_workers(config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    return xdist.make_scheduler(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist controller: collect a finished worker's records."""
    store = node.config.stash.get(STORE_KEY, None)
    if store is not None:
        records, ratios = xdist.from_worker(node)
        store.from_workers.update(records)
        store.time_ratios.update(ratios)


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    parametrize.skip_unselected(config, items, benchmark_active=benchmark.active(config))


@pytest.fixture(scope="session")
def measurements(request: pytest.FixtureRequest) -> MeasurementStore:
    """The session's measure-once cache."""
    return request.config.stash[STORE_KEY]


@pytest.fixture(scope="session")
def session_device(request: pytest.FixtureRequest) -> str:
    """The device this session measures on (``--device``, default cuda when available)."""
    return selected_device(request.config)


@pytest.fixture(scope="session")
def suite_models(request: pytest.FixtureRequest) -> None:
    """For tests of the suite's own models whatever ``--flavor`` selects (the compile-budget
    sweep and the FSDP2 launch at ``tiny``): skipped, saying so, in a run only about
    ``--model-spec`` families, whose baselines and report they would otherwise join."""
    users = only_user_families(request.config)
    if users:
        pytest.skip(f"this run is about the --model-spec family {', '.join(users)}: the suite's own models "
                    f"(the compile-budget sweep and the FSDP2 launch at tiny) run when one of their flavors is selected")


@pytest.fixture(scope="session")
def baseline_gate(request: pytest.FixtureRequest) -> BaselineGate:
    """This session's baselines (``--baselines-dir``)."""
    return request.config.stash[GATE_KEY]


@pytest.fixture(scope="session")
def update_baselines(request: pytest.FixtureRequest) -> bool:
    """Whether --update-baselines was given."""
    return bool(request.config.getoption("--update-baselines"))


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
        if not xdist.hand_to_controller(config, store.local_json(), store.time_ratios):
            benchmark.write_json_without_timings(config, store.as_json())
    partly = benchmark.compared_partly(config) if benchmark.active(config) else None
    if partly:
        config.stash[COMPARED_PARTLY_KEY] = partly
    nothing = benchmark.compared_nothing(config) if benchmark.active(config) else None
    if nothing:
        config.stash[COMPARED_NOTHING_KEY] = nothing
        if benchmark.compare_fails(config):  # a gate that checked no figure fails, it does not pass
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    result = yield
    regressed = benchmark.regressed(config) if benchmark.active(config) else []  # compared in pytest-benchmark's
    if regressed:  # sessionfinish, shown in its terminal summary; the verdict is the last line
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"ERROR: {len(regressed)} benchmark{'s' * (len(regressed) > 1)} slower than "
                                f"--benchmark-compare-fail allows ({', '.join(regressed)}; 'Performance has regressed' "
                                f"above): the run fails", red=True)
    return result


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if HISTORY_NOTE_KEY in config.stash:
        terminalreporter.write_line(config.stash[HISTORY_NOTE_KEY], yellow=True)
    if COMPARED_NOTHING_KEY in config.stash:
        failed = benchmark.compare_fails(config)
        terminalreporter.write_line(f"{'ERROR' if failed else 'note'}: {config.stash[COMPARED_NOTHING_KEY]}",
                                    red=failed, yellow=not failed)
    for line in config.stash.get(LOOSE_TOLERANCES_KEY, []):
        terminalreporter.write_line(f"warning: {line}: the gate lets a move of that size pass (the registry's "
                                    f"tolerances: ac_bench/metrics.py)", yellow=True)
    if COMPARED_PARTLY_KEY in config.stash:
        terminalreporter.write_line(f"note: {config.stash[COMPARED_PARTLY_KEY]}", yellow=True)
    if GATE_KEY in config.stash:
        for line in config.stash[GATE_KEY].repairs:
            terminalreporter.write_line(f"baselines repaired: {line}")
    for path in config.stash.get(WRITTEN_KEY, []):
        terminalreporter.write_line(f"baselines written: {path}")
    if WRITTEN_KEY in config.stash and not config.stash[WRITTEN_KEY]:  # --update-baselines, and no gate ran
        flavors = ", ".join(f.name for f in selected_flavors(config))
        terminalreporter.write_line(
            f"warning: --update-baselines wrote nothing: no gated test ran in this selection (flavors {flavors}; "
            f"a -k naming another flavor's variant needs --flavor NAME too)", yellow=True)
    ratios = config.stash[STORE_KEY].time_ratios if STORE_KEY in config.stash else {}
    if ratios:
        terminalreporter.section("recompute cost: time(policy)/time(none) against FLOPs(policy)/FLOPs(none)")
        for key, r in sorted(ratios.items()):
            deviation = r["time_ratio"] / r["flop_ratio"] - 1
            terminalreporter.write_line(f"{key:32} time ratio {r['time_ratio']:.3f}   FLOP ratio {r['flop_ratio']:.3f}"
                                        f"   deviation {deviation:+.1%}")
