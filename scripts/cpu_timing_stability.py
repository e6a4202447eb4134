"""How stable is a CPU timing of the training step? Thread CPU time against wall time.

For each thread count, builds the variants, takes two warm-up steps each, then ``--steps``
steps interleaved (A B C D A B ...), timing each step with three clocks at once: the calling
thread's CPU time (``time.thread_time``, the suite's CPU timer), the process's CPU time
(``time.process_time``, all threads) and wall time (``time.perf_counter``). Prints per variant
and clock the median and the interquartile range as a percentage of the median, and
time(policy)/time(none) beside the FLOP ratio: over all steps, and per block of ``--block``
consecutive steps (what one run of bench/test_speed.py's ratio test sees: 5 rounds).

    python scripts/cpu_timing_stability.py                     # small, none/full x eager/sdpa, 15 steps, 1 and 2 threads
    python scripts/cpu_timing_stability.py --variants all --steps 10 --threads 1

The README's "Timing on the CPU" section quotes its output.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from ac_bench.models import VARIANTS, get_flavor, parse_variant
from ac_bench.probes.device import processor_name
from ac_bench.probes.flops import flop_counter_mode
from ac_bench.probes.timing import quartile_spread
from ac_bench.record import build_training

CLOCKS = {"thread": time.thread_time, "process": time.process_time, "wall": time.perf_counter}


def iqr_percent(values: list[float]) -> float:
    s = quartile_spread(values)
    return 100 * s["iqr"] / s["median"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", default="small")
    parser.add_argument("--variants", default="none-eager,full-eager,none-sdpa,full-sdpa",
                        help="comma-separated variants, or 'all' (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: %(default)s)")
    args = parser.parse_args(argv)
    flavor = get_flavor(args.flavor)
    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    print(f"# {processor_name()}, {os.cpu_count()} cores, torch {torch.__version__}, python {platform.python_version()}, "
          f"flavor {flavor.name}, {args.steps} steps per variant, load average {os.getloadavg()[0]:.2f} at start")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        steps, flops = {}, {}
        for v in variants:
            training = build_training(flavor, v, "cpu")
            counter = flop_counter_mode()
            training.step(around_forward_backward=counter)
            training.step()
            steps[v], flops[v] = training.step, counter.get_total_flops()
        times = {v: {c: [] for c in CLOCKS} for v in variants}
        start_wall = time.perf_counter()
        for _ in range(args.steps):
            for v, step in steps.items():
                before = {c: clock() for c, clock in CLOCKS.items()}
                step()
                for c, clock in CLOCKS.items():
                    times[v][c].append(clock() - before[c])
        print(f"\n## torch.set_num_threads({threads}): {time.perf_counter() - start_wall:.0f} s, "
              f"load average {os.getloadavg()[0]:.2f} at the end")
        print(f"{'variant':22} " + "  ".join(f"{c + ' median ms':>18} {'IQR %':>6}" for c in CLOCKS))
        for v in variants:
            print(f"{v:22} " + "  ".join(f"{1000 * statistics.median(times[v][c]):18.1f} {iqr_percent(times[v][c]):6.1f}"
                                          for c in CLOCKS))
        print(f"\ntime(policy)/time(none) in thread time, FLOP ratio, and the ratio of medians of each block of "
              f"{args.block} steps (dev = time ratio / FLOP ratio - 1)")
        for v in variants:
            policy, attention = parse_variant(v)
            base = f"none-{attention}"
            if policy == "none" or base not in times:
                continue
            flop_ratio = flops[v] / flops[base]
            for c in ("thread", "wall"):
                whole = statistics.median(times[v][c]) / statistics.median(times[base][c])
                blocks = [statistics.median(times[v][c][i:i + args.block]) / statistics.median(times[base][c][i:i + args.block])
                          for i in range(0, args.steps - args.block + 1, args.block)]
                devs = " ".join(f"{100 * (b / flop_ratio - 1):+.1f}%" for b in blocks)
                print(f"{v:22} {c:6} time ratio {whole:.3f}  FLOP ratio {flop_ratio:.3f}  dev {100 * (whole / flop_ratio - 1):+.1f}%"
                      f"  blocks: {devs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
