"""How long the solver takes to prove the MILP planner's optimum (``ac_bench.milp``) on the large flavors.

For each flavor (``seed`` at its 12 blocks and deepened to 24 and 48, ``llama3-8b-4l``) and
attention, the figures are measured once (fake tensors), then the MILP is solved at BUDGETS budgets
spread evenly from the smallest feasible peak to ``none``'s; prints per case the median and
largest solve time (both solves) and whether every optimum was proven (gap 0). The solver is
HiGHS where highspy is installed; ``AC_BENCH_MILP_SOLVER=cbc`` times PuLP 3's bundled CBC.

    python scripts/milp_solver_times.py [--budgets 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from ac_bench.blockplan import measure_figures
from ac_bench.milp import smallest_peak, solve, solver_name
from ac_bench.models import get_flavor
from ac_bench.record import measure_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, default=8)
    args = parser.parse_args()
    cases = [(get_flavor("seed"), 12), (get_flavor("seed"), 24), (get_flavor("seed"), 48), (get_flavor("llama3-8b-4l"), 4)]
    print(f"solver: {solver_name()}")
    print("| flavor | blocks | attention | binaries | budgets | median s | max s | all proven optimal |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for base, depth in cases:
        flavor = dataclasses.replace(base, depth=depth)
        for attention in ("sdpa", "eager"):
            fig = measure_figures(flavor, attention, "cpu", measure=lambda v, f=flavor: measure_variant(f, v, "cpu"))
            low = smallest_peak(fig)[1].peak_bytes
            high = measure_variant(flavor, f"none-{attention}", "cpu").peak_bytes
            times, proven = [], True
            for k in range(args.budgets):
                start = time.perf_counter()
                s = solve(fig, low + (high - low) * k // (args.budgets - 1))
                times.append(time.perf_counter() - start)
                proven &= s.gap == 0.0
            print(f"| {base.name} | {depth} | {attention} | {depth * len(fig.space)} | {args.budgets} | {statistics.median(times):.2f} | "
                  f"{max(times):.2f} | {'yes' if proven else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
