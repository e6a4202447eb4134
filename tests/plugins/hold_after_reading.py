"""A pytest plugin for the self-tests: runs started together wait for each other after
configuration (when the suite has read its baselines file) and before anything is measured,
so that each has read the file before either writes it back: the interleaving of two
``--update-baselines`` runs on one file that lost the first one's entries. Loaded only by name
(``-p tests.plugins.hold_after_reading``).

``AC_BENCH_HOLD_DIR``: a folder the runs share; ``AC_BENCH_HOLD_RUNS``: how many to wait for.
"""

import os
import time
from pathlib import Path


def pytest_sessionstart(session) -> None:
    folder, runs = Path(os.environ["AC_BENCH_HOLD_DIR"]), int(os.environ["AC_BENCH_HOLD_RUNS"])
    (folder / f"read-{os.getpid()}").touch()
    deadline = time.monotonic() + 300
    while len(list(folder.glob("read-*"))) < runs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the other runs never reached {folder}")
        time.sleep(0.05)
