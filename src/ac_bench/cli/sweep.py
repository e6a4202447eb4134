"""The sweep's command line: ``python -m ac_bench.sweep`` (``ac_bench/sweep`` runs ``main``).

    python -m ac_bench.sweep [--flavor seed] [--seq-lens N,N,...] [--variants V,V,...] [--budget-gib N]
                          [--device cpu|cuda] [--jobs N] [--markdown FILE] [--plot FILE]

``python -m ac_bench.report sweep ...`` is the same command (the report's parser adds these
arguments to its ``sweep`` subcommand). The tables and the figure are bench/report's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ac_bench.cases import variant_problem
from ac_bench.cli.common import MAX_GIB, ArgumentParser, add_flavor_arguments, check_device, check_output_files, chosen_flavor
from ac_bench.models import VARIANTS, parse_variant, variant_id
from ac_bench.probes.device import cuda_available, device_key
from ac_bench.record import is_estimate
from ac_bench.report.load import ReportInputError, exit_status
from ac_bench.report.plots import save_png, sweep_figure
from ac_bench.report.tables import GIB, budget_table, definitions, render, sweep_table, sweep_title, write_text
from ac_bench.sweep import DEFAULT_SEQ_LENS, SweepPoint, budget_fits, run_sweep

HELP = "activation memory of each variant over sequence lengths, and a memory-budget table"
DESCRIPTION = (
    "Measure each variant with ac_bench.record.measure_variant on the flavor at each sequence length: on the "
    "CPU an estimated flavor (seed) runs on fake tensors (a few seconds a point whatever the length, points "
    f"measured in parallel, one worker per core; the default {len(DEFAULT_SEQ_LENS) * len(VARIANTS)} points), "
    "on CUDA the step is run and an out-of-memory step is recorded as OOM. Prints activation_peak_bytes, "
    "forward_kept_bytes and saved_bytes beside ac_bench.analytic's prediction of the bytes kept for backward, "
    "and the FLOP overhead measured (where `none` with the same attention is in --variants) and predicted.")

EPILOG = ("Unusable options (--device cuda without CUDA) and unwritable output files are reported on one line "
          "on stderr with exit status 2.")


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _distinct(text: str, what: str) -> list[str]:
    """Comma-separated, at least one, none twice (an empty or doubled list is a typo, not a default)."""
    values = comma_list(text)
    if not values:
        raise argparse.ArgumentTypeError(f"got no {what} names in {text!r}")
    doubled = sorted({v for v in values if values.count(v) > 1})
    if doubled:
        raise argparse.ArgumentTypeError(f"{what} {doubled[0]!r} is given twice")
    return values


def names(what: str):
    """An argparse type: a comma-separated list of distinct ``what`` names."""
    def parse(text: str) -> list[str]:
        return _distinct(text, what)
    parse.__name__ = f"{what} names"
    return parse


def _seq_lens(text: str) -> list[int]:
    try:
        values = [int(part) for part in _distinct(text, "sequence length")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sequence lengths, got {text!r}")
    if len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"a sequence length is given twice in {text!r}")
    return values


def _variants(text: str) -> list[str]:
    variants = _distinct(text, "variant")
    try:
        canonical = [variant_id(*parse_variant(variant)) for variant in variants]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(set(canonical)) < len(canonical):
        raise argparse.ArgumentTypeError(f"a variant is given twice in {text!r} (every_2 is every_other)")
    return variants


def _jobs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes, got {text!r}")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_GIB:
        raise argparse.ArgumentTypeError(f"expected a positive number of GiB, at most {MAX_GIB}, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The sweep's options, on ``python -m ac_bench.sweep`` and ``python -m ac_bench.report sweep``."""
    add_flavor_arguments(parser)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device to measure on (default: cuda when available, else cpu)")
    parser.add_argument("--seq-lens", type=_seq_lens, default=list(DEFAULT_SEQ_LENS), metavar="N,N,...",
                        help=f"sequence lengths (default: {','.join(map(str, DEFAULT_SEQ_LENS))})")
    parser.add_argument("--variants", type=_variants, default=list(VARIANTS), metavar="V,V,...",
                        help=f"variants to sweep, e.g. none-eager,full-sdpa,every_4-sdpa (default: all "
                             f"{len(VARIANTS)})")
    parser.add_argument("--budget-gib", type=_positive, default=None, metavar="N",
                        help="also table, per variant, the longest swept sequence length before the first "
                             "whose whole-step peak (parameters, gradients, optimizer state included) exceeds "
                             "N GiB or runs out of memory, with its FLOP overhead; the answer is as fine as "
                             "--seq-lens (no bisection), and '>= N' says even the longest swept length fits")
    parser.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                        help="worker processes measuring points in parallel on the CPU (default: one per CPU "
                             "core; results do not depend on it); on CUDA points run one at a time")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the tables as Markdown")
    parser.add_argument("--plot", type=Path, metavar="FILE",
                        help="write a PNG: log-log memory against sequence length per variant (activation "
                             "peak; bytes kept for backward with the analytic prediction; whole-step peak and "
                             "the budget)")
    return parser


def build_parser(prog: str = "python -m ac_bench.sweep") -> argparse.ArgumentParser:
    return add_arguments(ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG))


def sweep_command(args: argparse.Namespace) -> None:
    """Run the sweep the parsed options describe; print the tables, write --markdown / --plot."""
    check_output_files(markdown=args.markdown, plot=args.plot)  # before minutes of measuring
    device = args.device or ("cuda" if cuda_available() else "cpu")
    check_device(device)
    flavor = chosen_flavor(args)
    for variant in args.variants:  # a variant the flavor's model cannot take, before anything is measured
        problem = variant_problem(flavor, variant)
        if problem:
            raise ReportInputError(f"--variants {problem}; choose variants for --flavor {flavor.name}")

    def progress(point: SweepPoint, seconds: float) -> None:
        print(f"  {flavor.name} seq {point.seq_len:>6} {point.variant:<18} "
              f"{'OOM' if point.oom else 'ok'} {seconds:5.1f} s", file=sys.stderr)

    jobs = 1 if device == "cuda" else args.jobs or os.cpu_count() or 1
    points = run_sweep(flavor, args.variants, args.seq_lens, device, progress=progress, jobs=jobs,
                       model_specs=tuple(args.model_spec))
    estimated = is_estimate(flavor, device)
    title = sweep_title(flavor.name, device_key(device), estimated)
    tables = [sweep_table(points, title)]
    if args.budget_gib is not None:
        fits = budget_fits(points, int(args.budget_gib * GIB))
        tables.insert(0, budget_table(fits, points, args.budget_gib, title))
    shape = (f"d_model {flavor.d_model}, {flavor.n_heads} heads, depth {flavor.depth}, batch {flavor.batch}, "
             f"{flavor.dtype}")
    lengths = ", ".join(map(str, sorted(set(args.seq_lens))))
    intro = [f"Flavor `{flavor.name}` ({shape}) at sequence lengths {lengths}; torch {torch.__version__}.",
             definitions("peak MiB", "act. peak MiB", "kept MiB", "saved MiB", "flops",
                         *(["estimate"] if estimated else []))]
    heading = "Activation checkpointing: memory over sequence length"
    sys.stdout.write(render(heading, intro, tables, markdown=False))
    if args.markdown:
        write_text(args.markdown, render(heading, intro, tables, markdown=True))
    if args.plot:
        save_png(sweep_figure(points, title, args.budget_gib), args.plot)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ac_bench.sweep``: bad input is one line on stderr and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    return exit_status(parser.prog, lambda: sweep_command(args))
