"""Running the suite in a subprocess, as a user would."""

from __future__ import annotations

import configparser
import contextlib
import importlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def needs_pulp():
    """PuLP, or the test skips naming the extra that installs it."""
    return pytest.importorskip("pulp", reason="the MILP planner needs PuLP: pip install 'ac-bench[milp]'")


def tiny_seq128():
    """``tiny`` with a longer sequence, so that activations rather than the optimizer step set the
    peak (at ``tiny`` itself every per-block plan peaks alike)."""
    from ac_bench.models import Flavor
    return Flavor("tiny", d_model=32, n_heads=2, depth=3, batch=2, seq_len=128)


def _child_env() -> dict[str, str]:
    """This environment for a child pytest: not an xdist worker even when this process is one.
    The library is installed; ``tests.plugins.*`` (``-p``) import from the child's current
    folder, the repository root, which ``python -m`` and ``python -c`` put on sys.path."""
    env = dict(os.environ)
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def run_pytest(*args: str, timeout: float = 300, cwd: Path = ROOT,
               pythonpath: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m pytest ARGS`` in ``cwd`` (the repository root, or a user's folder), with
    ``pythonpath`` on PYTHONPATH if given and ``env`` added to the environment; output captured
    as text."""
    env = {**_child_env(), **(env or {})}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def tox_gpu_phases() -> list[list[str]]:
    """The pytest commands of ``tox -e gpu`` (tox.ini), in order, each split into words after
    ``pytest``, with the CPU and the tiny flavor in place of CUDA and seed (``{posargs}`` and
    ``{env:...}`` left for the caller to substitute)."""
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    lines = [line for line in tox["testenv:gpu"]["commands"].splitlines() if line.startswith("pytest ")]
    return [[{"cuda": "cpu", "seed": "tiny"}.get(word, word) for word in shlex.split(line)[1:]] for line in lines]


_PYTEST_MAIN_RUNNER = """
import contextlib, io, json, sys
import pytest
results = []
for args in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = int(pytest.main(["-p", "no:cacheprovider", *args]))
        except SystemExit as exc:
            code = exc.code
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def run_pytest_cases(cases: list[list[str]], timeout: float = 600) -> list[dict]:
    """``pytest ARGS`` for each of ``cases``, one after another in one fresh Python process
    (``pytest.main``; torch is imported once): for runs that end in a usage error before
    anything is measured. Each result: ``{"code", "stdout", "stderr"}``."""
    proc = subprocess.run([sys.executable, "-c", _PYTEST_MAIN_RUNNER], input=json.dumps(cases), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=_child_env())
    if proc.returncode != 0:
        raise AssertionError(f"the pytest runner failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


#: The library's family modules that register their families when first imported.
FAMILY_MODULES = ("ac_bench.models.hf", "ac_bench.models.titan")


def forget_module(name: str) -> None:
    """Undo the import of module ``name`` (whose families a test takes out of the registries
    again), so that the next import runs it, and registers them, anew: out of ``sys.modules``
    and off its parent package. The parent keeps a submodule as an attribute, and ``from
    ac_bench.models import hf`` takes that attribute without importing: left there, a later
    import found the module but not its families (``ac_bench.scale``: "transformers lacks
    LlamaForCausalLM", in whichever tests ran after ``tests/test_hf.py`` in one process)."""
    sys.modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules and getattr(sys.modules[parent], child, None) is not None:
        delattr(sys.modules[parent], child)


@contextlib.contextmanager
def registries_kept(modules: tuple[str, ...] = FAMILY_MODULES) -> Iterator[None]:
    """Within it, families and flavors may be registered and the family modules ``modules``
    imported; afterwards the family and flavor registries are as they were, and each of
    ``modules`` that was not imported before is forgotten (``forget_module``), so that later
    tests (and the valid names they print) see what a process that never imported it sees."""
    from ac_bench.models import FLAVORS, families

    saved = dict(families.FAMILIES), dict(FLAVORS)
    imported = {name for name in modules if name in sys.modules}
    try:
        yield
    finally:
        for name in modules:
            if name not in imported:
                forget_module(name)
        for registry, before in zip((families.FAMILIES, FLAVORS), saved):
            registry.clear()
            registry.update(before)


def imported_for_the_module(name: str) -> Iterator[ModuleType]:
    """A module-scoped fixture's body: the family module ``name`` (``ac_bench.models.hf``, ``...titan``),
    imported for one test module only (``registries_kept``)."""
    with registries_kept((name,)):
        yield importlib.import_module(name)


def assert_spec_fails_in_one_line_without(monkeypatch, dependency: str, module: str) -> None:
    """``--model-spec MODULE:ALL`` with ``dependency`` not importable (and ``module`` not yet
    imported) is one line naming the failed import."""
    from ac_bench.models import load_family_spec

    monkeypatch.setitem(sys.modules, dependency, None)
    monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ValueError) as info:
        load_family_spec(f"{module}:ALL")
    assert str(info.value).startswith(f"--model-spec '{module}:ALL': cannot import '{module}': "
                                      "ModuleNotFoundError") and "\n" not in str(info.value), str(info.value)
