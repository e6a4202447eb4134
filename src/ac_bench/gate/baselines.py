"""The deterministic gate: memory figures and FLOPs against committed baselines.

One file per device key, ``baselines/<device_key>/figures.json``: a JSON document whose
``entries`` map each case id (``small-full-sdpa``) to its figures, one entry per line, keys
sorted, so a diff is readable. A figure that moves beyond its metric's relative tolerance,
in either direction, fails; an intended change is accepted by rerunning with
``--update-baselines``, which rewrites the entries of what ran, keeps the rest, and writes
atomically (temporary file, then rename).

The file states its own format version (``schema_version``, ``BASELINES_SCHEMA_VERSION``; not
the record's): a file without one is read as the current version, one from a newer suite is
refused. Two runs updating the same file at once take turns under a lock and each merges its
entries into the file as it is on disk then, so neither loses the other's.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from ac_bench.metrics import DEFAULT_TOLERANCES, INFO_FIELDS, MAX_FIGURE, METRICS, declared_tolerances
from ac_bench.outputs import locked, write_text_atomic
from ac_bench.record import Measurement


class BaselineError(Exception):
    """A baselines file that cannot be used; the message says which file and why."""


#: The version of the baselines file's format that this suite writes and reads. 1: a JSON object
#: with ``schema_version``, ``tolerances`` (metric -> relative tolerance) and ``entries`` (case
#: id -> figures). Files written before the field existed have the same format and are read as 1.
BASELINES_SCHEMA_VERSION = 1

#: The largest relative tolerance a file may set: beyond 100% any decrease passes, so a lost
#: saving could never fail the gate.
MAX_TOLERANCE = 1.0


def baseline_path(directory: Path, device_key: str) -> Path:
    return Path(directory) / device_key / "figures.json"


def entry_of(record: Measurement) -> dict:
    """The figures of one record that the gate stores and compares."""
    data = record.as_dict()
    return {k: data[k] for k in sorted((*DEFAULT_TOLERANCES, *INFO_FIELDS))}


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, with the length of what was cut (a number of
    400 digits in a message stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def schema_problems(tolerances: dict, entries: dict) -> list[str]:
    """What makes a baselines file unusable, each naming the entry: a tolerance that is not a
    finite number in [0, ``MAX_TOLERANCE``] (0: exact) or names no metric; an entry that is not an object; a
    figure that is not an integer in [0, ``MAX_FIGURE``] (null only for a nullable metric); an
    info field that is not a string. A missing tolerance is not here: ``missing_tolerances``
    (updatable)."""
    problems = []
    for metric, tol in sorted(tolerances.items()):
        if metric not in METRICS:
            problems.append(f"tolerance for unknown metric {shown(metric)} (valid: {', '.join(sorted(METRICS))})")
        elif not _number(tol) or not 0 <= tol <= MAX_TOLERANCE:
            problems.append(f"tolerance of {metric} is {shown(tol)}, not a finite number from 0 (exact) to "
                            f"{MAX_TOLERANCE} (a relative tolerance: 0.01 is 1%)")
    for key, entry in sorted(entries.items()):
        if not isinstance(entry, dict):
            problems.append(f"entry {shown(key)} is {type(entry).__name__}, not an object")
            continue
        for metric, spec in sorted(METRICS.items()):
            if metric not in entry:
                continue  # an entry older than the metric: the gate says how to add it
            value = entry[metric]
            if value is None and spec.nullable:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_FIGURE:
                problems.append(f"entry {shown(key)}: {metric} is {shown(value)}, not a non-negative integer "
                                f"of at most 2**63 - 1")
        for info in INFO_FIELDS:
            if not isinstance(entry.get(info), str):
                problems.append(f"entry {shown(key)}: {info} is {shown(entry.get(info))}, not a string")
    return problems


SUITE_FILE = "this suite's file"


def restore_advice(path: Path, what: str = "the file") -> str:
    """How to get ``path`` back: ``git checkout`` where git tracks it, else from the user's own
    copy: a ``--baselines-dir`` outside any repository, or a file git does not track (a run
    saved into ``.benchmarks/``), where ``git checkout`` would only fail. A work tree is a
    ``.git`` in the file's folder or one above; where git itself is not installed, the file is
    taken to be tracked."""
    folder = Path(path).absolute().parent
    if not any((d / ".git").exists() for d in (folder, *folder.parents)):
        return f"restore {what} from your copy ({path} is in no git repository)"
    if not _tracked_by_git(Path(path).absolute()):
        return f"restore {what} from your copy ({path} is not tracked by git)"
    return f"restore {what} with `git checkout -- {path}`"


def _tracked_by_git(path: Path) -> bool:
    """Whether git tracks ``path`` (``git ls-files --error-unmatch``); True where git cannot
    tell (not installed, the repository unreadable), so the advice stays ``git checkout``."""
    import shutil
    import subprocess
    git = shutil.which("git")
    if git is None:
        return True
    try:
        found = subprocess.run([git, "ls-files", "--error-unmatch", "--", path.name], cwd=path.parent,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return True
    if found.returncode == 0:
        return True
    return "did not match any file" not in found.stderr  # another failure (not a repository we can read): unknown


def version_problem(path: Path, version: object) -> str | None:
    """Why a file's ``schema_version`` cannot be read (None if it can): not a positive integer,
    or newer than ``BASELINES_SCHEMA_VERSION``."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return (f"{path}: schema_version is {shown(version)}, not a positive integer; {restore_advice(path)}, "
                f"or delete the field (a file without one is read as version "
                f"{BASELINES_SCHEMA_VERSION})")
    if version > BASELINES_SCHEMA_VERSION:
        return (f"{path}: baselines schema_version {shown(version)} was written by a newer ac-bench; this suite "
                f"reads versions up to {BASELINES_SCHEMA_VERSION}: update ac-bench to the version that wrote it, "
                f"or {restore_advice(path, SUITE_FILE)}")
    return None


@dataclass
class BaselineFile:
    """The parsed contents of one device key's figures file."""

    path: Path
    tolerances: dict[str, float]
    entries: dict[str, dict]

    @classmethod
    def load(cls, path: Path) -> "BaselineFile | None":
        """The file's contents, None if it does not exist. Raises BaselineError, with one line
        naming the file, the problem and the fix, for a file that is not JSON (or nested too
        deeply to parse), not of this shape, of a newer ``schema_version``, or with a value
        ``schema_problems`` refuses."""
        path = Path(path)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())[:200]
            raise BaselineError(f"{path}: not a readable baselines file ({reason}); {restore_advice(path, 'it')} "
                                f"or delete it and rerun with --update-baselines") from None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict) \
                or not isinstance(data.get("tolerances"), dict):
            raise BaselineError(f"{path}: expected a JSON object with 'tolerances' and 'entries'; "
                                f"{restore_advice(path, 'it')} or delete it and rerun with --update-baselines")
        problem = version_problem(path, data.get("schema_version", BASELINES_SCHEMA_VERSION))
        if problem:
            raise BaselineError(problem)
        problems = schema_problems(data["tolerances"], data["entries"])
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BaselineError(f"{path}: {problems[0]}{more}; {restore_advice(path)}, "
                                f"or delete the entry and rerun with --update-baselines")
        return cls(path, dict(data["tolerances"]), dict(data["entries"]))

    def missing_tolerances(self) -> list[str]:
        """Registry metrics this file has no tolerance for (``--update-baselines`` adds them)."""
        return sorted(set(METRICS) - set(self.tolerances))

    def looser_tolerances(self) -> list[str]:
        """One line per problem with the file's tolerances against what each metric declares
        for the file's memory method (``ac_bench.metrics.declared_tolerances``: the CUDA
        allocator's figures have their own): a tolerance looser than declared lets a move of
        that size pass; a file mixing CUDA allocator entries with others is a problem too. A
        missing tolerance is ``missing_tolerances``' (the plugin refuses it before this)."""
        methods = {e.get("memory_method") for e in self.entries.values()}
        if "cuda-allocator" in methods and len(methods) > 1:
            return [f"{self.path}: CUDA allocator entries beside others: {sorted(map(str, methods))}"]
        declared = declared_tolerances("cuda-allocator" if methods == {"cuda-allocator"} else None)
        return [f"{self.path}: tolerance of {m} is {t:g}, looser than the declared {declared[m]:g}"
                for m, t in sorted(self.tolerances.items()) if m in declared and t > declared[m]]

    def dumps(self) -> str:
        """Stable text: this suite's ``schema_version``, then sorted keys, one entry per line."""
        lines = ["{", f'"schema_version": {BASELINES_SCHEMA_VERSION},', f'"tolerances": {json.dumps(self.tolerances, sort_keys=True)},', '"entries": {']
        items = sorted(self.entries.items())
        for i, (key, entry) in enumerate(items):
            comma = "," if i < len(items) - 1 else ""
            lines.append(f"{json.dumps(key)}: {json.dumps(entry, sort_keys=True)}{comma}")
        lines += ["}", "}", ""]
        return "\n".join(lines)

    def write(self) -> None:
        """Write atomically (``ac_bench.outputs.write_text_atomic``): the old file stays whole if
        the write fails or is killed, and keeps its mode."""
        write_text_atomic(self.path, self.dumps())


#: Where baselines live unless ``--baselines-dir`` says otherwise: ``baselines/`` of the folder
#: the suite runs in (the repository root; the plugin resolves it against pytest's rootdir).
DEFAULT_BASELINES_DIR = Path("baselines")


def accept_command(record: Measurement, directory: Path | None = None, suite: str = "bench/",
                   options: tuple[str, ...] = (), default_directory: Path = DEFAULT_BASELINES_DIR) -> str:
    """The command that accepts ``record``'s figures, with every option that selects what ran
    and where the baselines live, so that it works when pasted as is: ``suite`` is what pytest
    is given to run, as the user types it, shell-quoted (``ac_bench.plugin.options.suite_path``:
    ``bench/``, or ``-p ac_bench.plugin`` and a user's test paths), ``options`` the run's options that a
    flavor name depends on (``--model-spec SPEC``, ``--sdpa-backend NAME``); ``--baselines-dir``
    is left out where ``directory`` is ``default_directory``, the run's default."""
    device = record.device.split(":")[0]
    where = ""
    if directory is not None and Path(directory).resolve() != Path(default_directory).resolve():
        where = f" --baselines-dir {shlex.quote(str(directory))}"
    extra = "".join(f" {shlex.quote(o)}" for o in options)
    # A record whose model is no registered flavor (ac_bench.scale's Llama 3 shapes) is measured
    # whatever --flavor says, and --flavor with its name would be refused.
    from ac_bench.models import FLAVORS
    flavor = f" --flavor {record.flavor}" if record.flavor in FLAVORS else ""
    return (f"pytest {suite} --device {device}{flavor}"
            f"{extra}{where} --update-baselines -k {record.case_id}")


def _number(value: object) -> bool:
    """A finite int or float (not a bool); an int too large for a float is not finite here."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def compare(record: Measurement, baseline: dict, tolerances: dict[str, float], fix: str | None = None) -> list[str]:
    """One message per metric of ``record`` (every metric of ``ac_bench.metrics.METRICS``) that
    moved beyond tolerance from ``baseline``, or that cannot be compared."""
    case = record.case_id
    fix = fix or accept_command(record)
    old_torch = baseline.get("torch_version", "unknown")
    if baseline.get("memory_method") != record.memory_method:
        return [f"{case}: memory_method changed from {baseline.get('memory_method')!r} to "
                f"{record.memory_method!r}; figures from different methods are not comparable. "
                f"Accept with: {fix}"]
    messages = [f"{case}: the baselines file has a tolerance for unknown metric {m!r}; valid metrics: "
                f"{', '.join(sorted(METRICS))}" for m in sorted(set(tolerances) - set(METRICS))]
    for metric in sorted(METRICS):
        tol = tolerances.get(metric)
        if tol is None:
            messages.append(f"{case}: the baselines file has no tolerance for {metric}, so it cannot be "
                            f"gated; rewrite the file with: {fix}")
            continue
        if not _number(tol) or tol < 0:
            messages.append(f"{case}: tolerance of {metric} is {tol!r}, not a finite number >= 0")
            continue
        if metric not in baseline:
            # An entry older than the metric (baselines/nvidia-h200 predates optimizer_step_peak_bytes):
            # never a pass; the figure must be measured on this device.
            messages.append(f"{case}: the baseline entry has no {metric} (it predates the metric), so it is not "
                            f"gated; measure it on this device ({record.device_key}) with: {fix}")
            continue
        old, new = baseline[metric], getattr(record, metric)
        if old is None or new is None:
            if old is not new:
                messages.append(f"{case}: {metric} was {old!r} and is now {new!r}: one of them is not "
                                f"measurable. If intended, accept it with: {fix}")
            continue
        if not _number(old):
            messages.append(f"{case}: baseline {metric} is {old!r}, not a finite number; restore the file "
                            f"or rewrite the entry with: {fix}")
            continue
        change = (new - old) / old if old else (0.0 if new == old else float("inf"))
        if abs(change) > tol:
            messages.append(
                f"{case}: {metric} moved {change:+.2%} (tolerance ±{tol:.2%}), "
                f"{'a saving' if new < old else 'a loss'}{_torch_change(old_torch, record.torch_version)}: "
                f"baseline {old:,} (torch {old_torch}) -> now {new:,} (torch {record.torch_version}). "
                f"If the change is intended, accept it with: {fix}"
            )
    for metric in sorted(m for m in METRICS if METRICS[m].estimates):
        drift = _estimate_drift(record, baseline, metric, tolerances.get(metric), old_torch, fix)
        if drift:
            messages.append(drift)
    return messages


def _estimate_drift(record: Measurement, baseline: dict, metric: str, tol: object, old_torch: str,
                    fix: str) -> str | None:
    """Where ``metric`` predicts another (``Metric.estimates``: ``predicted_peak_bytes`` the
    ``peak_bytes``): the message if the measured figure moved away from the prediction, that is
    if measured minus predicted differs from the baseline entry's by more than ``tol`` of the
    baseline's prediction; None where it did not, or where a figure is missing (the comparison
    of each figure says so)."""
    target = METRICS[metric].estimates
    figures = (getattr(record, metric), getattr(record, target), baseline.get(metric), baseline.get(target))
    if not _number(tol) or not all(isinstance(v, int) and not isinstance(v, bool) for v in figures):
        return None
    predicted, measured, old_predicted, old_measured = figures
    off, old_off = measured - predicted, old_measured - old_predicted
    if abs(off - old_off) <= tol * old_predicted:
        return None
    unit = METRICS[target].unit
    return (f"{record.case_id}: the measured {target} moved away from the prediction ({metric}){_torch_change(old_torch, record.torch_version)}: "
            f"predicted {predicted:,} {unit}, measured {measured:,} {unit}, {off:+,} {unit} off; in the baseline "
            f"predicted {old_predicted:,}, measured {old_measured:,}, {old_off:+,} off (torch {old_torch}); "
            f"tolerance ±{tol:.2%} of the prediction. The model no longer predicts what this torch allocates: "
            f"fix the model, or if the change is intended, accept it with: {fix}")


def _torch_change(old: str | None, new: str) -> str:
    """`` with the torch upgrade (2.13.0 -> 2.14.1)`` where the versions differ: every figure is
    bytes or FLOPs, so fewer is a saving and more a loss, and the version says who moved it."""
    if old is None or old == new:
        return ""
    return f" with the torch {'upgrade' if _version_key(new) > _version_key(old) else 'change'} ({old} -> {new})"


def _version_key(version: str) -> tuple:
    """``2.13.0+cpu`` -> (2, 13, 0); a part that is not a number sorts as 0."""
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("+")[0].split(".")[:3])


class BaselineGate:
    """Compares records against one directory of baselines, or stages them for update."""

    def __init__(self, directory: Path, suite: str = "bench/", options: tuple[str, ...] = (),
                 default_directory: Path = DEFAULT_BASELINES_DIR) -> None:
        """``suite``, ``options``, ``default_directory``: what ``accept_command`` prints beside
        the record's own (the benchmark's folder, the options that select the flavor, and the
        folder that needs no ``--baselines-dir``)."""
        self.directory = Path(directory)
        self.suite = suite
        self.options = tuple(options)
        self.default_directory = Path(default_directory)
        self._files: dict[str, BaselineFile | None] = {}
        self._staged: dict[str, dict[str, dict]] = {}
        #: What ``write_staged`` changed beyond the entries, one line each (for the summary).
        self.repairs: list[str] = []

    def accept_command(self, record: Measurement) -> str:
        """The command that accepts ``record``'s figures in this gate's folder."""
        return accept_command(record, self.directory, self.suite, self.options, self.default_directory)

    def file_for(self, device_key: str) -> BaselineFile | None:
        if device_key not in self._files:
            self._files[device_key] = BaselineFile.load(baseline_path(self.directory, device_key))
        return self._files[device_key]

    def stage(self, record: Measurement) -> None:
        """Remember ``record`` for ``write_staged``."""
        self._staged.setdefault(record.device_key, {})[record.case_id] = entry_of(record)

    def write_staged(self) -> list[Path]:
        """Merge staged entries into their files and write each atomically. The file is read
        again under its lock (``ac_bench.outputs.locked``) at write time, so that entries another
        run wrote since this one started are kept, and two runs writing at once take turns.
        Raises BaselineError if the file on disk has become unusable (nothing is written)."""
        written = []
        for key, entries in sorted(self._staged.items()):
            path = baseline_path(self.directory, key)
            with locked(path):
                existing = BaselineFile.load(path)
                # A metric new to the registry gets its declared tolerance (the CUDA allocator's
                # for a file of allocator figures); existing ones are kept.
                defaults = declared_tolerances(next(iter(entries.values())).get("memory_method"))
                if existing:
                    self.repairs += [f"{existing.path}: added the default tolerance {defaults[m]} for {m}"
                                     for m in existing.missing_tolerances()]
                merged = BaselineFile(path, {**defaults, **(existing.tolerances if existing else {})},
                                      dict(existing.entries) if existing else {})
                merged.entries.update(entries)
                merged.write()
            self._files[key] = merged
            written.append(merged.path)
        self._staged.clear()
        return written
