"""Output paths checked before anything is measured: a run that measures for minutes and then
cannot write its JSON, its baselines or its report has lost its work."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (what ``mkdir(parents=True)`` starts from)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def folder_problem(folder: Path, create: bool = False) -> str | None:
    """Why files cannot be written in ``folder`` (None if they can): tried with a temporary file,
    which is what an atomic write needs. ``create``: the folder may be made, so its nearest
    existing ancestor is tried instead."""
    folder = Path(folder)
    probe = nearest_existing(folder) if create else folder
    if not probe.exists():
        return f"cannot write: the folder {folder} does not exist; create it or choose a path in an existing folder"
    if not probe.is_dir():
        return f"cannot write: {probe} is a file, not a folder; choose another path"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ac-bench-write-check.", dir=probe)
    except OSError as exc:
        return f"cannot write in {probe} ({exc.strerror}); choose a writable path"
    os.close(fd)
    os.unlink(tmp)
    return None


def file_problem(path: Path, create_folder: bool = False) -> str | None:
    """Why ``path`` cannot be written as a file (None if it can), without touching it."""
    path = Path(path)
    if str(path).strip() == "":
        return "cannot write: the path is empty; give a file name"
    if path.is_dir():
        return f"cannot write: {path} is a folder, not a file; give a file name"
    problem = folder_problem(path.parent if str(path.parent) else Path("."), create=create_folder)
    if problem:
        return problem
    if path.exists() and not os.access(path, os.W_OK):
        return f"cannot write: {path} exists and is not writable; choose another path or make it writable"
    if path.exists() and not path.is_file():  # a device or a pipe: an atomic write would replace it
        return f"cannot write: {path} is not a regular file; give a file name"
    return None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, flushed to
    disk, then renamed over the target, so the old file stays whole if anything fails.

    The file keeps its mode (a new one gets what the umask gives any new file, not
    mkstemp's 0600); temporary files left by a killed earlier write are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with _termination_raises():
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for ``path`` while the block runs, so that writers who read the
    file, merge and write it back take turns: ``fcntl.flock`` on a sidecar ``.NAME.lock`` in the
    same folder (created if missing and left there, since removing it would let a third
    writer lock a new file while the second still holds the old one). Advisory and POSIX only
    (Linux, macOS; also over NFS, where Linux emulates flock with fcntl locks): it orders the
    suite's own writers, not other programs. Blocks until the lock is free."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


@contextlib.contextmanager
def _termination_raises() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit while a file is written (Ctrl-C already raises
    KeyboardInterrupt), so that the temporary file is removed and the old file stays; a
    SIGKILL leaves the old file intact too, and its temporary file is removed by the next write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def significant_decimals(value: float, digits: int = 3) -> int:
    """The decimals that show ``value`` (non-zero) to ``digits`` significant digits: 0.000714
    needs 6 for 3, 5.3 needs 2, 530 none (0)."""
    return max(0, digits - 1 - math.floor(math.log10(abs(value))))


def gib_at_least(nbytes: int, decimals: int) -> str:
    """``nbytes`` in GiB with ``decimals`` decimals (more below 1 GiB, for 3 significant digits),
    rounded up: a budget printed to be pasted
    back (the smallest feasible) must not come out below what it names (8808366224 B is
    ``8.204``, not ``8.203``, which is 8807904182 B once given back as ``--budget-gib``)."""
    gib = nbytes / 2 ** 30
    if 0 < gib < 1:  # at least 3 significant digits: 766480 B is 0.000714, not 0.001 (the budget beside it)
        decimals = max(decimals, significant_decimals(gib))
    scale = 10 ** decimals
    return f"{math.ceil(nbytes * scale / 2 ** 30) / scale:.{decimals}f}"


def gib_text(nbytes: int) -> str:
    """A budget in GiB to 4 significant digits, as a user gives it (``--budget-gib 0.00072``:
    ``0.00072``; 1 GiB: ``1``), not ``0.001``."""
    return f"{nbytes / 2 ** 30:.4g}"


def byte_unit(largest: int | float) -> tuple[str, int]:
    """The unit a table of byte figures is printed in: the largest of GiB, MiB and KiB that its
    ``largest`` figure (bytes) fills at least once, else B; as ``(name, bytes per unit)``. A
    small model's table is then not all ``0.000 GiB`` (``tiny``'s peaks are 0.7 MiB)."""
    return next(((name, size) for name, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10))
                 if largest >= size), ("B", 1))


def flop_unit(largest: int | float) -> tuple[str, float]:
    """The unit a table of FLOP figures is printed in: the largest of TFLOP, GFLOP, MFLOP and
    kFLOP (decimal, as FLOPs are counted) that ``largest`` fills at least once, else FLOP; as
    ``(name, FLOPs per unit)``."""
    return next(((name, size) for name, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3))
                 if largest >= size), ("FLOP", 1.0))


def bytes_text(nbytes: int | float, decimals: int = 2) -> str:
    """``nbytes`` in the unit it fills (``byte_unit``), with ``decimals`` decimals: ``748.52 KiB``,
    ``751.52 MiB``, ``27.58 GiB``; B figures are whole (``512 B``)."""
    unit, size = byte_unit(nbytes)
    return f"{nbytes:.0f} B" if size == 1 else f"{nbytes / size:.{decimals}f} {unit}"


def flops_text(flops: int | float, decimals: int = 2) -> str:
    """``flops`` in the unit it fills (``flop_unit``), with ``decimals`` decimals: ``262.14 kFLOP``;
    0 is ``0 FLOP``."""
    unit, size = flop_unit(flops)
    return f"{flops:.0f} FLOP" if size == 1 else f"{flops / size:.{decimals}f} {unit}"
