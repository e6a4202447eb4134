"""The pytest-benchmark adapter: every use of pytest-benchmark's internals is here.

pytest-benchmark keeps its session in ``config._benchmarksession`` (a private attribute, read
for the stored-history check and to write the JSON when nothing was timed); the version these
uses were written against is pinned wherever the suite is installed (requirements-cpu.txt,
pyproject.toml, tox.ini), and another version that lacks them fails once with one line
(``check_version``)."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pytest
import torch

from ac_bench.gate.baselines import restore_advice
from ac_bench.gate.timing_storage import timing_comparison_refusal, timing_storage
from ac_bench.models import resolve_dtype
from ac_bench.plugin.options import baselines_dir, selected_device, selected_device_key, selected_flavors, selected_timing_key
from ac_bench.probes.device import cuda_available, device_name, processor_generation, processor_name
from ac_bench.probes.timing import CPU_TIMING_THREADS, clock_description, timer_name

PYTEST_BENCHMARK_DEFAULT_STORAGE = "file://./.benchmarks"
PYTEST_BENCHMARK_DEFAULT_TIMER = "time.perf_counter"
#: What this adapter reads of pytest-benchmark's session object.
SESSION_ATTRIBUTES = ("compared_mapping", "compare", "compare_fail", "storage", "save", "autosave", "json",
                      "benchmarks", "get_machine_info", "save_json", "check_regressions", "performance_regressions")
TESTED_VERSION = "5.3.1"
#: The folders of the file storage that did not exist before pytest-benchmark made them.
UNSAVED_FOLDERS_KEY = pytest.StashKey[list]()


def active(config: pytest.Config) -> bool:
    """Whether pytest-benchmark is loaded (not ``-p no:benchmark``)."""
    return config.pluginmanager.hasplugin("benchmark")


def _session(config: pytest.Config):
    return getattr(config, "_benchmarksession", None)


def check_version(config: pytest.Config) -> None:
    """One usage error when the installed pytest-benchmark's session lacks what this adapter
    reads (another version than the pinned one)."""
    bs = _session(config)
    missing = [a for a in SESSION_ATTRIBUTES if bs is not None and not hasattr(bs, a)]
    if missing:
        from importlib.metadata import version
        raise pytest.UsageError(
            f"pytest-benchmark {version('pytest-benchmark')}: its session lacks {', '.join(missing)}, which this "
            f"suite reads; install pytest-benchmark=={TESTED_VERSION} (requirements-cpu.txt, tox.ini)")


def configure_storage_and_timer(config: pytest.Config) -> None:
    """Runs before pytest-benchmark's own pytest_configure (which is trylast).

    pytest-benchmark files runs under a machine id that tells neither GPUs nor processor models
    apart, so the storage gets one folder per timing key: committed ``timing_storage(...)`` by
    default, or <user's storage>/<timing key> when --benchmark-storage is given. The timer is
    the device's own (``ac_bench.probes.timing.timer_name``).
    """
    option = config.option
    if not hasattr(option, "benchmark_storage"):
        return  # pytest-benchmark not active (-p no:benchmark)
    key = selected_timing_key(config)
    if option.benchmark_storage == PYTEST_BENCHMARK_DEFAULT_STORAGE:
        storage = timing_storage(baselines_dir(config), selected_device_key(config), key)
        option.benchmark_storage = f"file://{storage}"
    else:
        option.benchmark_storage = option.benchmark_storage.rstrip("/") + f"/{key}"
    config.stash[UNSAVED_FOLDERS_KEY] = missing_folders(option.benchmark_storage)
    if option.benchmark_timer == PYTEST_BENCHMARK_DEFAULT_TIMER:
        option.benchmark_timer = timer_name(selected_device(config))
    compare = getattr(option, "benchmark_compare", None)
    if isinstance(compare, str) and len(Path(compare).parts) > 2 and not Path(compare).is_file():
        # pytest-benchmark's own loading raises a ValueError here: an INTERNALERROR
        raise pytest.UsageError(f"--benchmark-compare={compare}: no such file; give an existing file, a stored run's "
                                f"number (NNNN) in {option.benchmark_storage.removeprefix('file://')}, or "
                                f"--benchmark-compare alone for the newest")
    if isinstance(compare, str) and is_file_storage(option.benchmark_storage):
        quiet_the_warning_compare_refusal_replaces(config, compare)


def quiet_the_warning_compare_refusal_replaces(config: pytest.Config, compare: str) -> None:
    """pytest-benchmark warns at configure time that ``--benchmark-compare=NNNN`` matches no
    stored run (two lines of ``warnings`` output with its source line) and runs on; in a file
    storage ``compare_refusal`` says it in one usage error when the session starts, so that one
    warning, for this value, is ignored until the run ends. Any other warning is kept."""
    from pytest_benchmark.logger import PytestBenchmarkWarning
    catcher = warnings.catch_warnings()
    catcher.__enter__()
    warnings.filterwarnings("ignore", category=PytestBenchmarkWarning,
                            message=re.escape("Can't compare. No benchmark files in ") + ".*"
                            + re.escape(f" match {compare!r}.") + "$")
    config.add_cleanup(lambda: catcher.__exit__(None, None, None))


def is_file_storage(storage: str) -> bool:
    """Whether ``--benchmark-storage`` is a ``file://`` storage or a bare path (which
    pytest-benchmark reads as one), not another kind (``elasticsearch+https://...``)."""
    return "://" not in storage or storage.startswith("file://")


def missing_folders(storage: str) -> list[Path]:
    """The folders of a ``file://`` storage (or a bare path, which pytest-benchmark reads as one)
    that do not exist yet, deepest first; ``[]`` for another kind of storage."""
    if not is_file_storage(storage):
        return []
    folder = Path(storage.removeprefix("file://")).absolute()
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty_storage(config: pytest.Config) -> None:
    """pytest-benchmark's file storage makes its folder when it is opened (``FileStorage.__init__``,
    at configure time), whether or not anything will be saved; the folders it made are removed
    again while empty, after it has read the stored runs. Saving makes them again
    (``FileStorage.get``), so a timing key's folder exists only once a run was saved into it
    (--benchmark-save, --benchmark-autosave). Called when the session starts and again when
    pytest unconfigures, for a run that has no session (``--help``, a usage error); each
    folder is tried once."""
    folders, config.stash[UNSAVED_FOLDERS_KEY] = config.stash.get(UNSAVED_FOLDERS_KEY, []), []
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another process saved meanwhile) or already gone: keep the rest
            break


def drop_compare_fail_without_history(config: pytest.Config) -> str | None:
    """--allow-empty-history: pytest-benchmark has loaded the stored runs by now (its
    pytest_configure); with none to compare against, --benchmark-compare-fail would end the run
    in a usage error after everything was measured, and a nightly job that saves its history
    only when it passes would never get one. Then the threshold is dropped for this run; the
    note saying so is returned (None when nothing was dropped)."""
    bs = _session(config)
    if bs is None or not config.getoption("--allow-empty-history") or bs.compared_mapping:
        return None
    if bs.compare is True and bs.compare_fail:
        bs.compare_fail = []
        return (f"benchmark history: no earlier run in {bs.storage} for device key {selected_device_key(config)!r}, "
                f"so the timings were not compared (--benchmark-compare-fail skipped, --allow-empty-history); "
                f"{'this run was saved and is' if bs.save or bs.autosave else 'save a run (--benchmark-autosave) to make it'} "
                f"the reference of the next one")
    return None


#: ``stored_run_problem``'s kinds: a file pytest-benchmark cannot parse (it skips it, with a
#: warning, and compares with the run before it), and one it parses but cannot compare with.
UNREADABLE, INCOMPLETE = "unreadable", "incomplete"


def stored_run_problem(path: Path) -> tuple[str, str] | None:
    """What makes a stored run unusable for a comparison, as (kind, text): ``UNREADABLE`` (not
    JSON), ``INCOMPLETE`` (no list of benchmarks, a benchmark without its name, or a statistic
    its table and thresholds read missing or not a number: ``pytest_benchmark.stats.Stats.fields``
    but ``ops``, which it fills in for old runs); None for a usable run. pytest-benchmark 5.3.1
    skips a file it cannot parse with a warning (and compares against an older run: the newest
    but one) and fails with a traceback on a missing or non-numeric statistic."""
    from pytest_benchmark.stats import Stats
    stored_stats = [field for field in Stats.fields if field != "ops"]
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return UNREADABLE, f"is not a readable stored run ({type(exc).__name__}: {exc})"
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, list):
        return INCOMPLETE, "holds no list of benchmarks"
    for bench in benchmarks:
        name = bench.get("fullname") if isinstance(bench, dict) else None
        stats = bench.get("stats") if isinstance(bench, dict) else None
        if not isinstance(name, str) or not isinstance(stats, dict):
            return INCOMPLETE, "holds a benchmark without its fullname or stats"
        missing = [field for field in stored_stats if field not in stats]
        if missing:
            return INCOMPLETE, f"lacks {', '.join(missing)} in the stats of {name}"
        for field in stored_stats:
            value = stats[field]
            if field == "outliers":  # "2;0": pytest-benchmark's text
                continue
            positive = field in ("min", "max", "mean", "median")
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or value < 0 or (value == 0 and positive):
                return INCOMPLETE, (f"holds {field} = {value!r} in the stats of {name}, not a "
                                    f"{'positive' if positive else 'non-negative'} number")
    return None


def compare_refusal(config: pytest.Config) -> str | None:
    """The usage error for a timing comparison that cannot be made as asked, said when the
    session starts, or None: ``--benchmark-compare-fail`` without ``--benchmark-compare``
    (pytest-benchmark says so in a traceback after every benchmark ran); ``--benchmark-compare=N``
    that matches no stored run (pytest-benchmark warns and compares nothing); a run to compare
    with that is unreadable or incomplete (``stored_run_problem``). Checked in a file storage
    only, and by the controller only under xdist."""
    bs = _session(config)
    if bs is None or hasattr(config, "workerinput"):
        return None
    if bs.compare_fail and not bs.compare:
        return ("--benchmark-compare-fail needs --benchmark-compare: alone it compares with the newest stored run "
                "for this device key, --benchmark-compare=NNNN with run NNNN")
    query = getattr(bs.storage, "query", None)
    if not bs.compare or query is None:
        return None
    stored, compared = _stored_and_compared(bs)
    if bs.compare is not True:
        if not compared:
            names = ", ".join(p.name.removesuffix(".json") for p in stored[-5:]) or "none yet"
            return (f"--benchmark-compare={bs.compare}: no stored run matches it in {bs.storage} (the newest: "
                    f"{names}); give one's number (NNNN), a file, or --benchmark-compare alone for the newest")
    for path in compared:
        if not path.name[:4].isdigit():  # not a stored run: never advise restoring or deleting it
            return (f"--benchmark-compare={bs.compare}: {path} is not a stored run (NNNN_name.json); give a run's "
                    f"number in {bs.storage}, or a file saved with --benchmark-save")
        problem = stored_run_problem(path)
        if problem:
            kind, text = problem
            fate = ("pytest-benchmark would compare with the run before it" if bs.compare is True and kind == UNREADABLE
                    else "it cannot be compared with")
            return f"--benchmark-compare: {path} {text}, so {fate}; {restore_advice(path, 'it')}, or delete it"
    return None


def _stored_and_compared(bs) -> tuple[list[Path], list[Path]]:
    """The stored runs of a file storage, oldest first, and those ``--benchmark-compare`` names
    (the newest where it is given alone; none where its value matches nothing)."""
    stored = bs.storage.query("[0-9][0-9][0-9][0-9]_")
    if bs.compare is True:
        return stored, stored[-1:]
    try:
        return stored, bs.storage.query(bs.compare)
    except ValueError:
        return stored, []


def stored_flavors(path: Path) -> set[str] | None:
    """The flavors a stored run was timed at (``machine_info.torch.dtypes``'s keys, which this
    plugin writes: ``machine_description``), or None where the file does not say (a run saved
    without this plugin, or unreadable: ``stored_run_problem`` says so)."""
    try:
        dtypes = json.loads(path.read_text(encoding="utf8"))["machine_info"]["torch"]["dtypes"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return set(dtypes) if isinstance(dtypes, dict) else None


def other_flavor_refusal(config: pytest.Config, flavors: set[str] | None = None) -> str | None:
    """Under ``--benchmark-compare-fail``, the usage error for a stored run timed at none of this
    run's ``flavors`` (default: ``--flavor``'s), said when the session starts: none of its
    benchmarks can match (a benchmark's name holds its flavor), so the run would end with
    ``compared_nothing`` only after every benchmark ran, minutes later. The file storage is shared
    by every flavor of a timing key, so the newest run is often another flavor's; the line names
    the newest that is not. None where the flavors overlap, or a file does not say (an older run)."""
    bs = _session(config)
    if bs is None or hasattr(config, "workerinput") or not (bs.compare and bs.compare_fail):
        return None
    if getattr(bs.storage, "query", None) is None:
        return None
    flavors = flavors if flavors is not None else {f.name for f in selected_flavors(config)}
    stored, compared = _stored_and_compared(bs)
    known = [(path, stored_flavors(path)) for path in compared]
    if not known or any(theirs is None or theirs & flavors for _, theirs in known):
        return None
    path, theirs = known[-1]
    ours = ", ".join(sorted(flavors))
    match = next((p for p in reversed(stored[-50:]) if (stored_flavors(p) or set()) & flavors), None)
    instead = (f"compare with the newest run that has {'it' if len(flavors) == 1 else 'them'} "
               f"(--benchmark-compare={match.name[:4]}: {match.name.removesuffix('.json')})" if match
               else f"no stored run in {bs.storage} has {'it' if len(flavors) == 1 else 'them'}: run without "
                    f"--benchmark-compare-fail once and save it (--benchmark-save NAME)")
    return (f"--benchmark-compare-fail: the stored run {path.name} was timed at flavor "
            f"{', '.join(sorted(theirs)) or 'none'} and this run times {ours}, so no benchmark could be compared; "
            f"{instead}")


def empty_history_refusal(config: pytest.Config) -> str | None:
    """The usage error for ``--benchmark-compare-fail`` with no earlier run to compare with (and
    no ``--allow-empty-history``), said when the session starts: pytest-benchmark raises it
    only after every benchmark has run ("requires valid --benchmark-compare", in a traceback).
    None where there is something to compare, or on an xdist worker (the controller says it)."""
    bs = _session(config)
    if (bs is None or hasattr(config, "workerinput") or config.getoption("--allow-empty-history")
            or bs.compared_mapping or not (bs.compare and bs.compare_fail)):
        return None
    return (f"--benchmark-compare-fail: no earlier run in {bs.storage} for device key "
            f"{selected_device_key(config)!r} to compare with; save one first (--benchmark-save NAME or "
            f"--benchmark-autosave), or add --allow-empty-history to run without the threshold until there is one")


def regressions_without_traceback(config: pytest.Config) -> None:
    """Keep pytest-benchmark's list of regressions, without the traceback after it.
    pytest-benchmark 5.3.1 logs the benchmarks that ``--benchmark-compare-fail`` failed
    ("Performance has regressed: ... Field 'median' has failed PercentageRegressionCheck: 13.1 >
    10.0"), then raises ``PerformanceRegression`` out of its terminal summary: pytest prints
    some 60 lines of its own frames, and the rest of the summary (the short test summary, the
    counts) is lost. The session's ``check_regressions`` now logs them and returns; the plugin
    fails the run itself (``regressed``)."""
    from pytest_benchmark.session import PerformanceRegression
    bs = _session(config)
    if bs is None:
        return
    check = bs.check_regressions

    def logged_not_raised() -> None:
        try:
            check()
        except PerformanceRegression:
            pass  # bs.performance_regressions holds them; regressed() reads them
    bs.check_regressions = logged_not_raised


def regressed(config: pytest.Config) -> list[str]:
    """The benchmarks ``--benchmark-compare-fail`` failed, by name (``test_training_step[cpu-small-full-sdpa]``),
    once pytest-benchmark has compared (from its ``pytest_sessionfinish`` on); empty otherwise."""
    bs = _session(config)
    return [str(name) for name, _ in (bs.performance_regressions if bs is not None else [])]


def compare_fails(config: pytest.Config) -> bool:
    """Whether --benchmark-compare-fail is in force (a threshold pytest-benchmark will check)."""
    bs = _session(config)
    return bool(bs is not None and bs.compare_fail)


def compared_nothing(config: pytest.Config) -> str | None:
    """Why the timing comparison compared nothing, or None: ``--benchmark-compare`` loaded a
    stored run (by default the newest) that holds none of the benchmarks this run timed, say a
    run of other tests or another flavor, so ``--benchmark-compare-fail`` would pass with no
    figure checked. Read after the benchmarks ran (``pytest_sessionfinish``)."""
    bs = _session(config)
    if bs is None or not bs.compared_mapping:
        return None
    ran = [b.fullname for b in bs.benchmarks if b]
    stored = {name for mapping in bs.compared_mapping.values() for name in mapping}
    if not ran or any(name in stored for name in ran):
        return None
    paths = ", ".join(str(Path(p).name) for p in bs.compared_mapping)
    return (f"--benchmark-compare: the stored run {paths} holds none of the {len(ran)} benchmark"
            f"{'s' * (len(ran) > 1)} this run timed (e.g. {ran[0].rsplit('/', 1)[-1]}), so nothing was compared"
            f"{' and --benchmark-compare-fail checked nothing' if bs.compare_fail else ''}; compare against a run "
            f"of these tests (--benchmark-compare=NNNN, its number in {bs.storage}), or save one (--benchmark-save NAME)")


def compared_partly(config: pytest.Config) -> str | None:
    """The note for a comparison that left some of this run's benchmarks out: the stored run
    holds some of them but not these (a variant or flavor added since), so
    ``--benchmark-compare-fail`` checked only the others. None where every benchmark had its
    counterpart, or none had (``compared_nothing``)."""
    bs = _session(config)
    if bs is None or not bs.compared_mapping:
        return None
    ran = [b.fullname for b in bs.benchmarks if b]
    stored = {name for mapping in bs.compared_mapping.values() for name in mapping}
    missing = [name for name in ran if name not in stored]
    if not missing or len(missing) == len(ran):
        return None
    paths = ", ".join(str(Path(p).name) for p in bs.compared_mapping)
    shown = ", ".join(name.rsplit("/", 1)[-1] for name in missing[:3]) + (", ..." if len(missing) > 3 else "")
    unchecked = " (nor checked by --benchmark-compare-fail)" if bs.compare_fail else ""
    return (f"--benchmark-compare: {len(missing)} of the {len(ran)} benchmarks this run timed "
            f"{'is' if len(missing) == 1 else 'are'} not in the stored "
            f"run {paths}, so {'it was' if len(missing) == 1 else 'they were'} not compared{unchecked}"
            f": {shown}; save a run of these tests (--benchmark-save NAME) to compare them next time")


def write_json_without_timings(config: pytest.Config, records: list[dict]) -> None:
    """pytest-benchmark writes no --benchmark-json when no benchmark ran (only estimated
    flavors, --benchmark-skip, or xdist, which disables benchmarks); the measurements still
    belong in it, so write it through pytest-benchmark's own hooks."""
    bs = _session(config)
    if bs is None or not getattr(bs, "json", None) or bs.benchmarks or not records:
        return
    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    config.hook.pytest_benchmark_update_commit_info(config=config, commit_info=commit_info)
    output_json = config.hook.pytest_benchmark_generate_json(
        config=config, benchmarks=[], include_data=True, machine_info=bs.get_machine_info(),
        commit_info=commit_info)
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=[], output_json=output_json)
    bs.save_json(output_json)


class BenchmarkHooks:
    """pytest-benchmark's hooks, registered only when the plugin is active (``-p no:benchmark``
    would otherwise make them unknown hooks: an INTERNALERROR). ``records`` and ``time_ratios``
    give the session's records and ratios when the JSON is written."""

    def __init__(self, store) -> None:
        self.store = store

    @staticmethod
    def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
        """The device, its key, the processor and its generation, the timer and its thread count,
        each flavor's dtype."""
        machine_info["torch"] = machine_description(config)

    @staticmethod
    def pytest_benchmark_compare_machine_info(config: pytest.Config, benchmarksession, machine_info: dict,
                                              compared_benchmark: dict) -> None:
        """Refuse, in one line, to compare timings of different device keys (a GPU against the
        CPU, or another GPU), of different processor models or generations, or taken with another
        timer or thread count: each is a different clock, not a regression."""
        refusal = timing_comparison_refusal(machine_info, compared_benchmark)
        if refusal:
            raise pytest.UsageError(f"--benchmark-compare: {refusal}")

    def pytest_benchmark_update_json(self, config: pytest.Config, benchmarks: list, output_json: dict) -> None:
        """Every case measured this session, timed or not, as one record each."""
        output_json["measurements"] = self.store.as_json()
        output_json["time_ratios"] = dict(sorted(self.store.time_ratios.items()))


def machine_description(config: pytest.Config) -> dict:
    """``machine_info["torch"]`` of the benchmark JSON: what the timings were taken on."""
    device = selected_device(config)
    on_cuda = device == "cuda" and cuda_available()
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "device_key": selected_device_key(config),
        "device_name": device_name(device) if on_cuda else "cpu",
        "processor": processor_name(),
        "processor_generation": processor_generation(),
        "timing_key": selected_timing_key(config),
        "timer": str(config.getoption("benchmark_timer")),
        "clock": clock_description(device),
        "timing_threads": CPU_TIMING_THREADS if device == "cpu" else None,
        "dtypes": {f.name: str(resolve_dtype(f, device)).removeprefix("torch.") for f in selected_flavors(config)},
    }
