"""The report's command line: ``python -m ac_bench.report table RUN.json [AFTER.json ...]``.

``python -m ac_bench.report sweep ...`` is kept as an alias of ``python -m ac_bench.sweep``
(ac_bench/cli/sweep.py), with the same options and output.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

from ac_bench.cli import frontier as frontier_cli
from ac_bench.cli import libraries as libraries_cli
from ac_bench.cli import plan as plan_cli
from ac_bench.cli import scale as scale_cli
from ac_bench.cli import sweep as sweep_cli
from ac_bench.cli.common import ArgumentParser, check_output_files
from ac_bench.report.load import ReportInputError, Run, exit_status, load_run
from ac_bench.report.plots import report_figure, save_png
from ac_bench.report.tables import report_text, write_text

COMMANDS = ("table", "sweep", "plan", "scale", "frontier", "libraries")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m ac_bench.report",
        description="The activation-checkpointing report: per flavor and device, each variant's median step "
                    "time and its ratio to `none` with the same attention, peak / activation-peak / kept / "
                    "saved / offloaded memory, FLOP overhead, and the Pareto frontier (no other variant both "
                    "at least as fast and at least as small, and better in one).",
        epilog="Input files come from `pytest bench/ --benchmark-json FILE`. Unreadable input (a missing "
               "file, not JSON, not this suite's output, records lacking fields or of another schema "
               "version) is reported on one line on stderr with exit status 2. `python -m ac_bench.report "
               "FILE...` means `table FILE...`.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{table,sweep,plan,scale,frontier,libraries}")

    table = sub.add_parser(
        "table", help="tables and a plot from one or more --benchmark-json files",
        description="Print a table per run, flavor and device. Timed figures come from the "
                    "test_training_step benchmarks, matched to the records by variant, flavor and device; "
                    "figures estimated on fake tensors (memory method fake-memtracker, e.g. seed on the CPU) "
                    "are labelled as estimates and are not timed. The frontier uses the median step time when "
                    "every variant of the table is timed, else the FLOP overhead. With several files (e.g. "
                    "before and after: two nights, two torch versions) each gets its tables, then the "
                    "variants that moved are listed, and the plot connects each moved point to the next run's.")
    table.add_argument("runs", nargs="+", metavar="RUN.json", type=Path,
                       help="pytest-benchmark JSON files of this suite, earliest first")
    table.add_argument("--flavor", type=sweep_cli.names("flavor"), default=None, metavar="NAMES",
                       help="comma-separated flavors to report (default: every flavor in the files)")
    table.add_argument("--markdown", type=Path, metavar="FILE", help="also write the report as Markdown")
    table.add_argument("--plot", type=Path, metavar="FILE",
                       help="write a PNG: peak memory (x) against median step time or FLOP overhead (y), "
                            "one labelled point per variant, frontier stepped; a panel per flavor and device")

    sweep_cli.add_arguments(sub.add_parser(
        "sweep", help=f"{sweep_cli.HELP} (the same as `python -m ac_bench.sweep`)",
        description=sweep_cli.DESCRIPTION, epilog=sweep_cli.EPILOG))
    plan_cli.add_arguments(sub.add_parser(
        "plan", help="the cheapest checkpointing plan that fits a memory budget, and its plot",
        description=plan_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    frontier_cli.add_arguments(sub.add_parser(
        "frontier", help="the MILP planner's per-block plans at a dozen budgets against torch.compile's budget sweep and sac",
        description=frontier_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    scale_cli.add_arguments(sub.add_parser(
        "scale", help="per-rank peak against world size for Llama 3 8B/70B/405B and Qwen3 8B/14B, and which policy "
                      "fits 40/80/141 GiB",
        description=scale_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    libraries_cli.add_arguments(sub.add_parser(
        "libraries", help="the suite's policies next to gradient_checkpointing_enable on Llama-3-8B and Qwen3-8B shapes",
        description=libraries_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def table_command(args: argparse.Namespace) -> None:
    """Load the runs, print their tables, write --markdown / --plot."""
    check_output_files(markdown=args.markdown, plot=args.plot)
    twice = sorted({str(p) for p in args.runs if sum(q.resolve() == p.resolve() for q in args.runs) > 1})
    if twice:
        raise ReportInputError(f"{twice[0]} is given twice; give each run once, earliest first")
    runs = [load_run(path) for path in args.runs]
    if args.flavor:
        chosen = []
        for run in runs:
            entries = tuple(e for e in run.entries if e.record.flavor in args.flavor)
            if not entries:
                present = sorted({e.record.flavor for e in run.entries})
                raise ReportInputError(f"{run.path}: no records of flavor {', '.join(args.flavor)} "
                                       f"(it has: {', '.join(present)})")
            chosen.append(Run(run.path, entries))
        runs = chosen
    sys.stdout.write(report_text(runs, markdown=False))
    if args.markdown:
        write_text(args.markdown, report_text(runs, markdown=True))
    if args.plot:
        save_png(report_figure(runs), args.plot)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; bad input is one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        if not Path(argv[0]).exists() and not argv[0].endswith(".json"):  # a mistyped command, not a run
            near = difflib.get_close_matches(argv[0], COMMANDS, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            print(f"python -m ac_bench.report: error: {argv[0]!r} is neither a command nor a file; {hint}"
                  f"the commands are {', '.join(COMMANDS)} (python -m ac_bench.report --help)", file=sys.stderr)
            return 2
        argv.insert(0, "table")
    args = build_parser().parse_args(argv)
    command = {"table": table_command, "sweep": sweep_cli.sweep_command, "plan": plan_cli.plan_command,
               "scale": scale_cli.scale_command, "frontier": frontier_cli.frontier_command,
               "libraries": libraries_cli.libraries_command}[args.command]
    # Errors found while running say what argparse's do: ``python -m ac_bench.report plan: error: ...``.
    return exit_status(f"python -m ac_bench.report {args.command}", lambda: command(args))
