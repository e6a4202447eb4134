"""Reading runs: a ``pytest bench/ --benchmark-json FILE`` of this suite (or a sharded launch's
``records.json`` or ``rank{R}.json``) becomes its
``ac_bench.record.Measurement`` records, each beside the median step time of the benchmark
that timed its training step, where one did (a benchmark whose ``extra_info`` carries the
record: ``STEP_TIMING_KEYS``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ac_bench.metrics import MAX_FIGURE, METRICS
from ac_bench.probes.memory import FAKE_MEMTRACKER
from ac_bench.record import Measurement

#: The memory method of figures estimated on fake tensors (``seed`` on the CPU).
ESTIMATE_METHOD = FAKE_MEMTRACKER
#: A benchmark whose ``extra_info`` names these is a variant's timed training step: its median
#: is that variant's step time (the benchmark's own name is the test's business, not the report's).
STEP_TIMING_KEYS = ("flavor", "device", "variant")


class ReportInputError(Exception):
    """Input a command cannot use; the message names the file (or option) and what is wrong."""


@dataclass(frozen=True)
class Entry:
    """One measurement record, its variant's median step time and median backward time (the
    backward phase of ``extra_info["timing"]``; None: not timed, or timed before phases were)."""

    record: Measurement
    median_s: float | None = None
    backward_s: float | None = None

    @property
    def estimated(self) -> bool:
        """Figures traced on fake tensors, not measured (and never timed): one process
        (``fake-memtracker``) or a rank of FSDP2 on the fake process group (``fake-fsdp-memtracker``)."""
        return self.record.memory_method in (ESTIMATE_METHOD, "fake-fsdp-memtracker")


@dataclass(frozen=True)
class Run:
    """One input file and its entries, in file order."""

    path: Path
    entries: tuple[Entry, ...]

    @property
    def torch_versions(self) -> list[str]:
        return sorted({e.record.torch_version for e in self.entries})


def _number(value: object) -> bool:
    """An int or float (not a bool) that a float holds: a 400-digit integer is not one."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _shown(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters with the length of the whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _records(path: Path, data: object) -> list[Measurement]:
    """The ``measurements`` list as records, or a ReportInputError naming the bad one."""
    if not isinstance(data, list):
        raise ReportInputError(f"{path}: 'measurements' is not a list of records")
    if not data:
        raise ReportInputError(f"{path}: 'measurements' is empty: the run measured no variant")
    records = []
    for i, item in enumerate(data):
        try:
            record = Measurement.from_dict(item)
        except (ValueError, TypeError) as exc:
            raise ReportInputError(f"{path}: measurements[{i}]: {' '.join(str(exc).split())[:300]}") from None
        for metric in METRICS:
            value = getattr(record, metric)
            if value is not None and value > MAX_FIGURE:
                raise ReportInputError(f"{path}: measurements[{i}]: {metric} has {len(str(value))} digits, more than "
                                       f"any figure (at most 2**63 - 1); the file is not a run of this suite")
        records.append(record)
    return records


def _medians(path: Path, benchmarks: object) -> dict[tuple[str, str, str], tuple[float, float | None]]:
    """Median seconds of each timed step and of its backward phase (None where not recorded),
    keyed by (flavor, device, variant)."""
    if benchmarks is None:
        return {}
    if not isinstance(benchmarks, list):
        raise ReportInputError(f"{path}: 'benchmarks' is not a list")
    medians = {}
    for bench in benchmarks:
        if not isinstance(bench, dict):
            raise ReportInputError(f"{path}: an entry of 'benchmarks' is not an object")
        name = bench.get("name", "?")
        info, stats = (bench.get(k) if isinstance(bench.get(k), dict) else {} for k in ("extra_info", "stats"))
        if not any(f in info for f in STEP_TIMING_KEYS):
            continue  # not a timed training step
        key = tuple(info.get(f) for f in STEP_TIMING_KEYS)
        median = stats.get("median")
        if not all(isinstance(k, str) for k in key) or not _number(median) or not 0 < median < float("inf"):
            raise ReportInputError(f"{path}: benchmark {name} lacks extra_info flavor/device/variant or a "
                                   f"positive finite stats.median (got {_shown(median)}); rerun the benchmark")
        phases = (info.get("timing") or {}).get("phases_s") if isinstance(info.get("timing"), dict) else None
        backward = phases.get("backward") if isinstance(phases, dict) else None
        medians[key] = (float(median), float(backward) if _number(backward) else None)
    return medians


def load_run(path: str | Path) -> Run:
    """Read one ``--benchmark-json`` file of this suite, or a sharded launch's ``OUT/records.json``
    or ``OUT/rank{R}.json`` (``ac_bench.distributed``; each rank's records timed by their own
    ``step_seconds``); bad input raises ReportInputError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path}: not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an integer of more than 4300 digits; nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())[:200]
        raise ReportInputError(f"{path}: not a run of this suite ({reason})") from None
    if isinstance(data, dict) and "records" in data and "measurements" not in data and "world_size" in data:
        data = {"measurements": data["records"]}  # a launch's OUT/records.json (ac_bench.distributed)
    elif isinstance(data, list) and data and all(isinstance(r, dict) and "rank" in r for r in data):
        data = {"measurements": data}  # one rank's OUT/rank{R}.json
    if not isinstance(data, dict) or "measurements" not in data:
        raise ReportInputError(f"{path}: not written by this suite's `pytest bench/ --benchmark-json` (no "
                               f"'measurements' list of records), nor a launch's records.json or rank{{R}}.json "
                               f"(python -m ac_bench.distributed)")
    records = _records(path, data["measurements"])
    medians = _medians(path, data.get("benchmarks"))
    entries = []
    seen = set()
    for r in records:
        key = (r.flavor, r.device, r.variant)
        if (*key, r.world_size, r.rank) in seen:
            rank = f" (rank {r.rank} of {r.world_size})" if r.world_size > 1 else ""
            raise ReportInputError(f"{path}: two measurement records of {r.flavor} {r.variant} on {r.device}{rank}")
        seen.add((*key, r.world_size, r.rank))
        # A rank of a sharded run (ac_bench/distributed.py) is not timed by pytest-benchmark: its
        # record carries the median of its own timed steps.
        timed = (r.step_seconds, None) if r.world_size > 1 else medians.get(key, (None, None))
        entries.append(Entry(r, *timed))
    return Run(path, tuple(entries))


def exit_status(name: str, command: Callable[[], None]) -> int:
    """Run a command; unusable input, an unwritable output file, a step larger than this
    machine's memory, or an exception raised in a user's ``--model-spec`` module is one line on
    stderr, ``{name}: error: ...``, and exit status 2 (no traceback). Any other exception is the
    suite's bug and keeps its traceback. A reader that closed the pipe early (``| head``) ends
    the command quietly with 141, the shell's status for SIGPIPE, as a C tool's would."""
    try:
        command()
        sys.stdout.flush()  # a closed pipe shows here, not as "Exception ignored" at exit
    except BrokenPipeError:
        # What is still buffered cannot be written either: stdout onto /dev/null, so the
        # interpreter's own flush at exit is quiet too (Python's docs, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ReportInputError as exc:
        print(f"{name}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:  # writing --markdown / --plot
        print(f"{name}: error: {exc.filename}: cannot write: {exc.strerror}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A step on real tensors larger than this machine (plan --flavor small --seq-len 1000000):
        # the allocator's own message, on one line, and what to change.
        text = " ".join(str(exc).split())
        if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
                "can't allocate memory" in text or "out of memory" in text)):
            print(f"{name}: error: out of memory measuring a step ({text[:200] or type(exc).__name__}); give a "
                  f"shorter --seq-len or a smaller --batch, or a flavor traced on fake tensors (seed)", file=sys.stderr)
            return 2
        # Raised in a user's --model-spec module: theirs to fix, in one line. Anything else is a bug.
        from ac_bench.models import user_family_failure
        line = user_family_failure(exc)
        if line is None:
            raise
        print(f"{name}: error: {line}", file=sys.stderr)
        return 2
    return 0
