"""The plugin as a user's own test file sees it, in-process (pytest's ``pytester``): the
parametrization follows --flavor and the families, a bad option is one usage-error line, and
the fixtures hand out the measure-once records."""

from __future__ import annotations

import pytest

from ac_bench.models import VARIANTS

USER_TEST = """
def test_each_case(case):
    assert case.device == "cpu"

def test_record(case, measurements):
    record = measurements.get(case)
    assert record.variant == case.variant and record.family == case.flavor.family
"""


def _run(pytester: pytest.Pytester, *args: str, subprocess: bool = False) -> pytest.RunResult:
    """pytest with the plugin on ``pytester``'s folder. In-process where nothing is measured;
    a measuring run goes to a subprocess: pytester forgets the modules an in-process run imported,
    and torch's lazily imported operator libraries cannot be registered twice in one process."""
    run = pytester.runpytest_subprocess if subprocess else pytester.runpytest_inprocess
    (pytester.path / "baselines").mkdir(exist_ok=True)  # a --baselines-dir must exist unless the run writes it
    # -p no:randomly: these runs check the order the plugin gives (make test shuffles this session).
    return run("-p", "ac_bench.plugin", "-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:randomly",
               "--device", "cpu", "--baselines-dir", str(pytester.path / "baselines"), *args)


def test_a_users_test_file_is_parametrized_over_the_selected_flavor(pytester: pytest.Pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = _run(pytester, "--flavor", "tiny", "--collect-only", "-q")
    assert result.ret == 0, result.stdout.str()
    ids = [line for line in result.outlines if line.startswith("test_user.py::test_each_case[")]
    assert ids == [f"test_user.py::test_each_case[cpu-tiny-{v}]" for v in VARIANTS], ids


def test_the_records_come_from_the_session_cache(pytester: pytest.Pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = _run(pytester, "--flavor", "tiny", "-k", "test_record and full-sdpa", "-q", subprocess=True)
    result.assert_outcomes(passed=1, deselected=2 * len(VARIANTS) - 1)


@pytest.mark.parametrize(("args", "message"), [
    (("--flavor", "huge"), "unknown flavor 'huge'"),
    (("--flavor", "tiny,tiny"), "--flavor names 'tiny' twice"),
    (("--model-spec", "no_such_module:SPEC"), "cannot import 'no_such_module'"),
])
def test_a_bad_option_is_one_usage_error_line(pytester: pytest.Pytester, args, message):
    pytester.makepyfile(test_user=USER_TEST)
    result = _run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    errors = [line for line in result.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0], result.errlines
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_an_xdist_without_the_overridden_scheduler_method_is_one_line(monkeypatch):
    """The pytest-xdist adapter overrides ``LoadGroupScheduling._split_scope``; a version that
    lacks it fails the run once, naming the version and the pinned one."""
    from xdist import scheduler

    from ac_bench.plugin import xdist

    for cls in scheduler.LoadGroupScheduling.__mro__:  # defined on LoadScopeScheduling and overridden
        if "_split_scope" in vars(cls):
            monkeypatch.delattr(cls, "_split_scope")
    config = type("Config", (), {"getvalue": lambda self, name: "loadgroup", "getini": lambda self, name: []})()
    with pytest.raises(pytest.UsageError, match=r"pytest-xdist==\S+ \(requirements-cpu.txt, tox.ini\)$") as info:
        xdist.make_scheduler(config, log=None)
    assert "\n" not in str(info.value) and "_split_scope" in str(info.value)


def test_a_pytest_benchmark_whose_session_lacks_what_is_read_is_one_line():
    """The pytest-benchmark adapter reads attributes of its private session object; a version
    whose session lacks one fails once, naming them and the pinned version."""
    from ac_bench.plugin import benchmark

    session = type("Session", (), {a: None for a in benchmark.SESSION_ATTRIBUTES if a != "compared_mapping"})()
    config = type("Config", (), {"_benchmarksession": session})()
    with pytest.raises(pytest.UsageError, match=r"lacks compared_mapping, .* install pytest-benchmark==5\.3\.1") as info:
        benchmark.check_version(config)
    assert "\n" not in str(info.value)
    benchmark.check_version(type("Config", (), {"_benchmarksession": None})())  # -p no:benchmark: nothing to check
