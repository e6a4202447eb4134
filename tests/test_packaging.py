"""Packaging: the library is one installable package, ``ac_bench``, that works without the
repository, and the repository's folders shadow nothing of a user's.

- A user's own package named ``models`` or ``bench`` (the repository's folder names) loads through
  ``--model-spec`` and is measured by the suite's benchmark modules.
- The wheel holds the library and nothing of the test code; installed alone in a fresh
  environment, its pytest plugin measures a user's family from a folder outside the repository.
- The library's modules import each other without a circle; the library neither imports nor
  names a test module, and the benchmark modules import only the library.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

EXAMPLE_FAMILY = ROOT / "examples" / "my_family.py"
#: Where each library file is installed from: (folder in the repository, the package it becomes).
LIBRARY_ROOTS = ((ROOT / "src" / "ac_bench", "ac_bench"), (ROOT / "models", "ac_bench.models"))
#: The two variants each subprocess measures: enough to see the plugin parametrize and measure
#: the user's family, few enough to keep this file fast (a tiny variant takes about 2 s).
VARIANTS = ("none-sdpa", "full-sdpa")
VARIANT_FILTER = f"({' or '.join(VARIANTS)})"


def write_user_package(folder: Path, package: str, family: str) -> str:
    """``folder/package/{__init__,user_family}.py``: the README's example family
    (``examples/my_family.py``) renamed to ``family`` (flavor ``{family}-tiny``), so that it
    clashes with no registered name. Returns the ``--model-spec`` that loads it."""
    text = EXAMPLE_FAMILY.read_text(encoding="utf-8")
    renamed = text.replace('"my-gpt', f'"{family}')
    assert renamed.count(f'"{family}') >= 3, "examples/my_family.py no longer names its family 'my-gpt'"
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text(f'"""A user\'s own package named {package}."""\n')
    (folder / package / "user_family.py").write_text(renamed, encoding="utf-8")
    return f"{package}.user_family:SPEC"


def user_env() -> dict[str, str]:
    """The environment of a user's shell: nothing puts the repository on ``sys.path`` (no
    PYTHONPATH, no user site), not an xdist worker."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_XDIST_WORKER", "PYTEST_PLUGINS")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=timeout)


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit status {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-3000:]}"


# --- 1. A user's package named models or bench ---------------------------------------------------

def pytest_command(runner: str) -> list[str]:
    """``python-m``: ``python -m pytest`` (the current folder first on ``sys.path``);
    ``console-script``: the environment's ``pytest`` console script (its own folder first;
    ``load_family_spec`` appends the current one)."""
    if runner == "python-m":
        return [sys.executable, "-m", "pytest"]
    script = Path(sysconfig.get_path("scripts")) / "pytest"
    if not script.is_file():
        pytest.skip(f"no pytest console script at {script}")
    return [str(script)]


@pytest.mark.parametrize(("package", "runner"), [("models", "python-m"), ("bench", "python-m"), ("models", "console-script")])
def test_user_package_named_like_a_repository_folder(tmp_path, package, runner):
    """A user's package named ``models`` or ``bench``, in the folder pytest runs from, is the one
    ``--model-spec {package}.user_family:SPEC`` loads (the repository's ``models/`` is installed
    as ``ac_bench.models`` and ``bench/`` is no package), and the suite's benchmark modules
    measure its flavor: each selected test passes under the user's flavor id.

    How it runs: from the user's folder (the current folder), with ``python -m pytest``, which
    puts that folder first on ``sys.path``, so that ``load_family_spec``'s
    ``importlib.import_module`` finds the package; and with the ``pytest`` console script, which
    does not (its own folder comes first): there ``load_family_spec`` falls back to the current
    folder. The benchmark modules are given by absolute path; ``-c <repo>/pyproject.toml`` and
    ``--rootdir <repo>`` pin the configuration (``--import-mode=importlib``, the markers) and the
    rootdir, whose ``conftest.py`` registers the plugin (pytest would find both from the paths'
    common folder too; given explicitly, no ini file around the user's folder can win). pytest
    imports ``<repo>/bench/test_memory.py`` as ``bench.test_memory`` (``bench/`` has no
    ``__init__.py``): with a user's package ``bench`` it becomes a submodule of the user's package
    in ``sys.modules``, which works as long as the user's package has no module of that name imported before collection
    (pytest would take that one).
    ``--baselines-dir`` names an empty folder: no test here compares against baselines."""
    family = f"user-{package}"
    flavor = f"{family}-tiny"
    spec = write_user_package(tmp_path, package, family)
    (tmp_path / "baselines").mkdir()
    tests = {"test_memory.py": "test_memory_record", "test_gradients.py": "test_gradients_bitwise_equal_to_no_checkpointing"}
    result = run([*pytest_command(runner), *(ROOT / "bench" / m for m in tests), "--rootdir", ROOT,
                  "-c", ROOT / "pyproject.toml", "--model-spec", spec, "--device", "cpu",
                  "--baselines-dir", tmp_path / "baselines", "-m", "not distributed", "-p", "no:cacheprovider",
                  "-k", f"({' or '.join(tests.values())}) and {VARIANT_FILTER}", "-v"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, output(result)
    for module, test in tests.items():
        for variant in VARIANTS:
            line = f"bench/{module}::{test}[cpu-{flavor}-{variant}] PASSED"
            assert line in result.stdout, f"{line!r} not in the output\n{output(result)}"
    assert f"{len(tests) * len(VARIANTS)} passed" in result.stdout, output(result)


# --- 2. The wheel, installed alone, outside the repository ----------------------------------------

def library_files() -> dict[str, Path]:
    """Every library file by the path it has in the wheel (``ac_bench/...``): ``src/ac_bench``
    and ``models/`` (installed as ``ac_bench/models``)."""
    found = {}
    for folder, package in LIBRARY_ROOTS:
        for path in sorted(folder.rglob("*.py")):
            found["/".join([*package.split("."), *path.relative_to(folder).parts])] = path
    return found


#: Not copied into the build's source folder: version control, environments, build outputs.
BUILD_COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", ".tox", "build", "dist", "*.egg-info", "__pycache__",
                                           ".pytest_cache", ".benchmarks", "*.whl")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built as ``pip wheel --no-deps --no-build-isolation`` builds it, from a copy of
    the working tree: setuptools builds in the source folder and would leave ``build/`` and
    ``src/ac_bench.egg-info`` in the repository (``build/`` is not ignored by git)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=BUILD_COPY_IGNORE, symlinks=True)
    result = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                  "--disable-pip-version-check", "-w", base / "dist", source], cwd=base, timeout=180)
    assert result.returncode == 0, output(result)
    (built,) = (base / "dist").glob("ac_bench-*.whl")
    return built


def test_wheel_holds_the_library_and_no_test_code(wheel):
    """The wheel holds every library file (``src/ac_bench`` and ``models/`` as
    ``ac_bench/models``, so no subpackage is missing from pyproject's explicit ``packages``) and
    the record's JSON Schema (package data); no other Python file, no ``test_*.py``, no
    ``conftest.py``, and no top-level name but ``ac_bench`` (no ``models``, ``bench``, ``tests``)."""
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("ac_bench/__init__.py", "ac_bench/models/families.py", "ac_bench/models/ac/base.py",
                     "ac_bench/plugin/__init__.py", "ac_bench/record.py", "ac_bench/record.schema.json"):
        assert required in names, required
    assert sorted(n for n in names if n.endswith(".py")) == sorted(library_files())
    basenames = [n.rsplit("/", 1)[-1] for n in names]
    assert [b for b in basenames if b.startswith("test_") and b.endswith(".py")] == []
    assert "conftest.py" not in basenames
    assert {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")} == {"ac_bench"}


OUTSIDE_TEST = '''\
"""Written by tests/test_packaging.py: the installed plugin on a user's family, outside the repository."""
import importlib.util
import json
import sys
from importlib.resources import files
from pathlib import Path

from jsonschema import Draft202012Validator

import ac_bench
import ac_bench.models
import ac_bench.plugin
import models

REPO = Path({repo!r})
DEV_ENV = Path({dev_env!r})
VENV = Path({venv!r})
FAMILY = {family!r}


def in_repo(path) -> bool:
    """In the repository, not counting the development environment (.venv, .tox) it may hold."""
    path = Path(path).resolve()
    return path.is_relative_to(REPO) and not path.is_relative_to(DEV_ENV)


def test_record(case, measurements):
    record = measurements.get(case)
    assert record.family == FAMILY and record.flavor == case.flavor.name == FAMILY + "-tiny"
    assert record.peak_bytes > record.resident_bytes > 0 and record.flops > 0
    schema = json.loads((files("ac_bench") / "record.schema.json").read_text())
    validator = Draft202012Validator({{"$defs": schema["$defs"], "$ref": "#/$defs/measurement"}})
    assert list(validator.iter_errors(record.as_dict())) == []


def test_imports_come_from_the_wheel_and_the_user():
    for module in (ac_bench, ac_bench.models, ac_bench.plugin):
        assert Path(module.__file__).resolve().is_relative_to(VENV), module.__file__
    assert Path(models.__file__).resolve() == (Path.cwd() / "models" / "__init__.py").resolve()
    assert [p for p in sys.path if in_repo(p or ".")] == []
    assert sorted(n for n, m in list(sys.modules.items()) if in_repo(getattr(m, "__file__", None) or "/")) == []
    for name in ("bench", "tests", "examples", "conftest"):
        spec = importlib.util.find_spec(name)
        assert spec is None or not any(in_repo(p) for p in [spec.origin or "/", *(spec.submodule_search_locations or [])])
'''


def test_installed_wheel_runs_outside_the_repository(tmp_path, wheel):
    """The wheel alone, in a fresh virtual environment, serves ``pytest -p ac_bench.plugin`` on a
    user's family from a folder outside the repository: a test file written there, using the
    plugin's ``case`` and ``measurements`` fixtures, measures each variant of the user's flavor,
    and the record validates against the schema the wheel ships.

    The fresh environment (``venv --without-pip``) sees the development environment's
    third-party packages (torch, pytest, pytest-benchmark, jsonschema) through a ``.pth`` line
    naming its site-packages; the ``.pth`` files inside that folder are not executed, so its
    editable ``ac_bench`` stays inactive: before the install ``ac_bench`` is not importable at
    all. The wheel is installed with the development environment's pip (``pip --python NEW
    install --no-deps --no-index``: offline, nothing but the wheel). In the run, ``ac_bench``
    comes from the new environment, ``models`` is the user's package (named like the
    repository's folder), and no entry of ``sys.path`` and no imported module is in the
    repository."""
    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT.resolve()), "the temporary folder must lie outside the repository"
    venv = tmp_path / "venv"
    result = run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, timeout=60)
    assert result.returncode == 0, output(result)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work,
                    timeout=60).stdout.strip())
    dev_paths = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "dev-environment.pth").write_text("".join(f"{p}\n" for p in dev_paths))

    probe = run([python, "-c", "import importlib.util as u; print([u.find_spec(n) is not None for n in "
                               "('torch', 'pytest', 'pytest_benchmark', 'jsonschema', 'ac_bench')])"], cwd=work, timeout=60)
    assert probe.stdout.strip() == "[True, True, True, True, False]", output(probe)

    result = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                  "--ignore-installed", "--disable-pip-version-check", wheel], cwd=work, timeout=180)
    assert result.returncode == 0, output(result)

    family = "outside-gpt"
    spec = write_user_package(work, "models", family)
    (work / "pytest.ini").write_text("[pytest]\n")  # the rootdir is this folder, whatever lies around it
    (work / "test_outside.py").write_text(OUTSIDE_TEST.format(repo=str(ROOT.resolve()), dev_env=str(Path(sys.prefix).resolve()),
                                                              venv=str(venv.resolve()), family=family))
    result = run([python, "-m", "pytest", "-p", "ac_bench.plugin", "test_outside.py", "--model-spec", spec,
                  "--device", "cpu", "-p", "no:cacheprovider", "-v",
                  "-k", f"{VARIANT_FILTER} or test_imports_come_from_the_wheel_and_the_user"], cwd=work, timeout=300)
    assert result.returncode == 0, output(result)
    for variant in VARIANTS:
        assert f"test_outside.py::test_record[cpu-{family}-tiny-{variant}] PASSED" in result.stdout, output(result)
    assert "test_imports_come_from_the_wheel_and_the_user PASSED" in result.stdout, output(result)


# --- 3. The import graph ------------------------------------------------------------------------

def module_name(path: Path) -> str:
    """The installed name of a library file: ``src/ac_bench/plugin/__init__.py`` ->
    ``ac_bench.plugin``, ``models/ac/base.py`` -> ``ac_bench.models.ac.base``."""
    for folder, package in LIBRARY_ROOTS:
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            return ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])
    raise ValueError(f"{path} is not a library file")


def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in library_files().values()}


def imported_names(source: Path | str, package: str) -> list[tuple[str, int]]:
    """``(name, line)`` for every import in the file (or source text), at any depth (functions
    included): the module imported, and for ``from X import a`` also ``X.a`` (which may be a
    submodule). Relative imports are resolved against ``package``, the file's own package."""
    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    found = []
    for node in ast.walk(ast.parse(text, str(source) if isinstance(source, Path) else "<source>")):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def import_graph() -> dict[str, dict[str, tuple[Path, int]]]:
    """module -> {imported library module: (file, line)}, library modules only, self-imports
    (a package's ``__init__`` importing its own submodules by name) left out."""
    modules = library_modules()
    graph: dict[str, dict[str, tuple[Path, int]]] = {m: {} for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target, line in imported_names(path, package):
            if target in modules and target != name:
                graph[name].setdefault(target, (path, line))
    return graph


def find_cycle(graph: dict[str, dict]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None where it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_library_import_graph_is_acyclic():
    """No circle of imports between the library's modules (module-level and function-level
    imports both; ``from ac_bench.pkg import name`` is an edge to ``ac_bench.pkg`` and, where
    ``name`` is a submodule, to it as well; ``models/`` counted as ``ac_bench.models``). A circle
    fails with each edge's file and line."""
    graph = import_graph()
    # The graph is the real one: a few known edges, and the cycle finder finds a cycle.
    assert "ac_bench.metrics" in graph["ac_bench.record"]
    assert "ac_bench.plugin.session" in graph["ac_bench.plugin"]
    assert "ac_bench.models.families" in graph["ac_bench.models"]
    assert {"ac_bench.analytic", "ac_bench.models.llama"} <= set(graph["ac_bench.analytic.llama"])
    assert find_cycle({"a": {"b": 0}, "b": {"c": 0}, "c": {"a": 0}}) == ["a", "b", "c", "a"]
    cycle = find_cycle(graph)
    if cycle:
        edges = [f"{a} -> {b} ({graph[a][b][0].relative_to(ROOT)}:{graph[a][b][1]})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import circle in the library:\n" + "\n".join(edges))


#: Top-level names the library and the benchmark modules must not import: the test code, and the
#: repository's folder names, which are a user's own packages where the suite is installed.
FOREIGN_TOP_LEVEL = ("bench", "tests", "conftest", "examples", "models")


def is_foreign(name: str) -> bool:
    """Whether an imported name is test code or a top-level repository folder."""
    return name.split(".")[0] in FOREIGN_TOP_LEVEL or any(part.startswith("test_") for part in name.split("."))


def foreign_imports(path: Path, package: str) -> list[str]:
    """``file:line name`` for each import of a test module or a top-level repository folder."""
    return [f"{path.relative_to(ROOT)}:{line} {name}" for name, line in imported_names(path, package) if is_foreign(name)]


def test_library_imports_no_test_code():
    """No library module imports ``bench``, ``tests``, ``conftest``, ``examples``, a ``test_*``
    module, or a top-level ``models`` (the library's own is ``ac_bench.models``)."""
    found = []
    for name, path in library_modules().items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found += foreign_imports(path, package)
    assert found == []


#: A test file named in library text: ``test_x.py``, ``bench/test_``, ``tests.x`` or ``tests/x``
#: (not "self-tests." ending a sentence).
TEST_MODULE_NAME = re.compile(r"\btest_\w*\.py\b|\bbench/test_|(?<![\w-])tests[./]\w")

#: Library files that name a test module, each to be fixed (then its mark removed: the xfail is strict).
NAMES_A_TEST_MODULE: dict[str, str] = {}


def _library_file_params() -> list:
    params = []
    for path in library_files().values():
        relative = path.relative_to(ROOT).as_posix()
        reason = NAMES_A_TEST_MODULE.get(relative)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(path, id=relative, marks=marks))
    return params


@pytest.mark.parametrize("path", _library_file_params())
def test_library_file_names_no_test_module(path):
    """No library file (code, docstring or comment) names a test module: the library is
    installed without ``bench/`` and ``tests/``, so a name of one of their files is a reference
    to something absent."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for n, line in enumerate(lines, 1)
             if TEST_MODULE_NAME.search(line)]
    assert found == []


def test_bench_modules_import_only_the_library():
    """No benchmark module imports another ``bench/test_*.py`` module, ``tests``, ``conftest``,
    ``examples`` or a top-level ``models`` (relative imports included): each imports the
    installed library only, so pytest may import it under any module name."""
    found = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        found += foreign_imports(path, "bench")
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += [f"{path.relative_to(ROOT)}:{n.lineno} relative import" for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.level]
    assert found == []


def test_import_checks_see_what_they_forbid():
    """The import checks above are not vacuous: each kind of forbidden import is found, at any
    depth, and the library's own imports are not."""
    source = textwrap.dedent("""\
        import bench.test_memory
        from tests.helpers import ROOT
        from models import Family
        from ac_bench import record
        def f():
            from bench import test_speed
            import conftest
        """)
    found = sorted(name for name, _ in imported_names(source, "ac_bench") if is_foreign(name))
    assert found == ["bench", "bench.test_memory", "bench.test_speed", "conftest", "models", "models.Family",
                     "tests.helpers", "tests.helpers.ROOT"]
