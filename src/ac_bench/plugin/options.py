"""The plugin's command-line options and what they select (device, flavors, families, keys),
validated once at configure time: a bad value is one ``pytest.UsageError`` line."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ac_bench.cases import DEFAULT_FLAVORS, DEVICES, build_problem, parse_flavor_list
from ac_bench.gate.baselines import DEFAULT_BASELINES_DIR
from ac_bench.models import FLAVORS, family_of, load_family_specs
from ac_bench.outputs import file_problem, folder_problem
from ac_bench.probes.attention import SDPA_BACKENDS
from ac_bench.probes.device import cuda_available, device_key, timing_key


def add_options(parser: pytest.Parser) -> None:
    """The suite's options, in their own group of ``pytest --help``."""
    group = parser.getgroup("activation checkpointing suite")
    group.addoption("--device", choices=DEVICES, default=None,
                    help="device to measure on (default: cuda when available, else cpu)")
    group.addoption("--flavor", default=None, metavar="NAMES",
                    help="comma-separated flavors to run, from: " + ", ".join(FLAVORS)
                    + "; default: " + "; ".join(f"{d}: {','.join(f)}" for d, f in DEFAULT_FLAVORS.items()))
    group.addoption("--model-spec", action="append", default=[], metavar="MODULE:NAME",
                    help="load a model family defined outside the repository (an ac_bench.models.Family, "
                         "e.g. examples.my_family:SPEC; repeatable; the module is imported from the current "
                         "folder or sys.path); without --flavor, its flavors are run")
    group.addoption("--update-baselines", action="store_true", default=False,
                    help="rewrite the deterministic baselines (memory, FLOPs) of the cases that ran, "
                         "keeping the other entries, instead of comparing against them")
    group.addoption("--slow", action="store_true", default=False,
                    help="also run the tests marked slow (sweeps; the README's test command, tox -e gpu "
                         "and the nightly job pass it)")
    group.addoption("--baselines-dir", default=None, metavar="DIR",
                    help=f"folder of per-device baselines (default: {DEFAULT_BASELINES_DIR}/ in pytest's rootdir)")
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
    """``--device``, or cuda when available, else cpu."""
    return config.getoption("--device") or ("cuda" if cuda_available() else "cpu")


def baselines_dir(config: pytest.Config) -> Path:
    """``--baselines-dir``, or ``baselines/`` in pytest's rootdir."""
    given = config.getoption("--baselines-dir")
    if given is None:
        return config.rootpath / DEFAULT_BASELINES_DIR
    if not given.strip():
        raise pytest.UsageError("--baselines-dir got an empty path; give the baselines folder "
                                f"(default: {DEFAULT_BASELINES_DIR}/ in pytest's rootdir)")
    if Path(given).is_file():
        raise pytest.UsageError(f"--baselines-dir {given} is a file, not a folder; "
                                f"give the folder that holds <device key>/figures.json")
    writes = config.getoption("--update-baselines") or any(
        getattr(config.option, name, None) for name in ("benchmark_save", "benchmark_autosave"))
    if not Path(given).exists() and not writes:
        # A mistyped folder would otherwise skip every gate test ("no baselines") and pass.
        raise pytest.UsageError(f"--baselines-dir {given}: no such folder; give the folder that holds "
                                f"<device key>/figures.json (default: {DEFAULT_BASELINES_DIR}/ in pytest's rootdir), "
                                f"or start one there with --update-baselines")
    return Path(given)


def suite_path(config: pytest.Config) -> str:
    """What the printed accept command runs, as the user types it (shell-quoted): ``bench/``
    from the suite's rootdir, else that folder's absolute path; in a user's own project (the
    plugin loaded with ``-p ac_bench.plugin``, no ``bench/`` beside it), ``-p ac_bench.plugin``
    and the test paths this run was given (none where pytest found them itself)."""
    folder = config.rootpath / "bench"
    if "ac_bench.plugin" in (config.option.plugins or []) and not folder.is_dir():
        given = config.args if config.args_source == pytest.Config.ArgsSource.ARGS else []
        return " ".join(["-p ac_bench.plugin", *(shlex.quote(a) for a in given)])
    return "bench/" if Path.cwd().resolve() == config.rootpath.resolve() else shlex.quote(str(folder))


def accept_options(config: pytest.Config) -> tuple[str, ...]:
    """The options a printed accept command must repeat for its flavor names and figures to mean
    what they meant in this run: each ``--model-spec`` and ``--sdpa-backend``."""
    options: list[str] = []
    for spec in config.getoption("--model-spec"):
        options += ["--model-spec", spec]
    if config.getoption("--sdpa-backend"):
        options += ["--sdpa-backend", config.getoption("--sdpa-backend")]
    return tuple(options)


def loaded_families(config: pytest.Config) -> list:
    """The families named by --model-spec, registered (once per process); a bad spec is a
    one-line usage error."""
    try:
        return [family for _, family in load_family_specs(config.getoption("--model-spec"))]
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def check_family_builds(config: pytest.Config) -> None:
    """Each ``--model-spec`` family builds each of its selected flavors, with each attention it
    declares (and a dropout, where it takes one), before anything is measured: a builder that
    raises is one usage error naming the ``--model-spec``, the flavor and the exception, instead
    of a traceback in every test of every variant (``ac_bench.cases.build_problem``)."""
    specs = dict(zip((family.name for family in loaded_families(config)), config.getoption("--model-spec")))
    device = selected_device(config)
    for flavor in selected_flavors(config):
        if flavor.family not in specs:
            continue
        family = family_of(flavor)
        for attention in family.attentions:
            for dropout in (0.0, 0.1) if family.dropout else (0.0,):
                problem = build_problem(flavor, attention, device, dropout)
                if problem:
                    raise pytest.UsageError(f"--model-spec {specs[flavor.family]!r}: {problem}; fix the family's "
                                            f"build function")


def selected_flavors(config: pytest.Config) -> tuple:
    """The flavors of ``--flavor``; without it, those of ``--model-spec``'s families, else the
    device's defaults. An unknown, empty or doubled name is a usage error."""
    text = config.getoption("--flavor")
    if text is None and config.getoption("--model-spec"):
        text = ",".join(f.name for family in loaded_families(config) for f in family.flavors)
    if text is None:
        text = ",".join(DEFAULT_FLAVORS[selected_device(config)])
    try:
        return parse_flavor_list(text)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def only_user_families(config: pytest.Config) -> tuple[str, ...]:
    """The ``--model-spec`` families a run is only about (every selected flavor is theirs), or
    ``()`` when it selects a flavor of the suite's own families too."""
    users = {family.name for family in loaded_families(config)}
    families = {flavor.family for flavor in selected_flavors(config)}
    return tuple(sorted(families)) if users and families <= users else ()


def selected_device_key(config: pytest.Config) -> str:
    """The baselines key of the device: ``cpu`` or the GPU's model (``nvidia-h200``)."""
    device = selected_device(config)
    return device_key(device) if device == "cpu" or cuda_available() else device


def selected_timing_key(config: pytest.Config) -> str:
    """The key of the timing storage: the GPU's device key, or on the CPU
    ``cpu-<model name>-f<family>-m<model>`` (``processor_key``: ``cpu-amd-epyc-f25-m17``)."""
    device = selected_device(config)
    return timing_key(device) if device == "cpu" or cuda_available() else device


def check_outputs(config: pytest.Config) -> None:
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
        folder = baselines_dir(config) / selected_device_key(config)
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
