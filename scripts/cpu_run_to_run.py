"""How far does a CPU timing median move between two runs of the speed module on one machine?

Runs ``pytest bench/test_speed.py -k 'training_step and (VARIANTS)'`` ``--runs`` times, each a new
process (as two CI runs would be), and prints each run's median per variant (thread CPU time, the
suite's CPU timer, and the wall median kept beside it) and the largest change of a median between
any two runs: the spread a ``--benchmark-compare-fail=median:X%`` threshold must exceed.

    python scripts/cpu_run_to_run.py                                # small, none-sdpa and full-sdpa, 5 runs
    python scripts/cpu_run_to_run.py --variants none-eager,full-eager --runs 3

tests/test_compare_fail.py uses the same selection; the README quotes this script's output.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", default="small")
    parser.add_argument("--variants", default="none-sdpa,full-sdpa")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    selection = "training_step and (" + " or ".join(variants) + ")"
    medians: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"run{i}.json"
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "bench/test_speed.py", "-q",
                                   "-k", selection, "--device", "cpu", "--flavor", args.flavor, "--benchmark-json", str(out)],
                                  cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                return 1
            data = json.loads(out.read_text())
            row = []
            for b in data["benchmarks"]:
                v = b["extra_info"]["variant"]
                medians[v].append((b["stats"]["median"], b["extra_info"]["timing"]["wall_s"]["median"], b["stats"]["min"]))
                row.append(f"{v} {1000 * b['stats']['median']:.1f} ms (wall {1000 * b['extra_info']['timing']['wall_s']['median']:.1f})")
            print(f"run {i + 1}: load average {load:.2f} at start: " + ", ".join(row), flush=True)
    print()
    for v, ms in medians.items():
        for label, k in (("thread time median", 0), ("thread time min", 2), ("wall median", 1)):
            worst = max(abs(a[k] / b[k] - 1) for a, b in itertools.permutations(ms, 2))
            print(f"{v:14} {label:18} largest change between two runs: {100 * worst:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
