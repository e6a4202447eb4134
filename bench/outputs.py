"""Output paths checked before anything is measured: a run that measures for minutes and then
cannot write its JSON, its baselines or its report has lost its work."""

from __future__ import annotations

import os
import tempfile
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
    return None
