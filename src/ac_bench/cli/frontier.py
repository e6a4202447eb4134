"""``python -m ac_bench.report frontier``: the MILP planner's frontier against torch.compile's.

Solves the per-block MILP (``ac_bench.milp``) at a dozen budgets from the smallest feasible peak
to ``none``'s, measures each plan (fake tensors for estimated flavors on the CPU), and measures
torch.compile's ``activation_memory_budget`` sweep (``budget_B``) and ``sac``. Writes a table
(Markdown) and a plot: recompute FLOPs against kept bytes and against the step's peak. For each
compiler point, the MILP is solved again at that point's measured peak, and at its peak and
kept bytes together, and the table says where the planner's answer recomputes more than the
compiler, and why.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ac_bench.cli.common import add_flavor_arguments, check_device, check_output_files, chosen_flavor, flavor_options, solver_prefix
from ac_bench.cli.plan import _budgets
from ac_bench.models import ATTENTIONS, budget_name
from ac_bench.record import Measurement, measure_variant
from ac_bench.report.load import ReportInputError
from ac_bench.report.plots import save_png
from ac_bench.report.tables import write_text

MIB = 2 ** 20
DEFAULT_COMPILE_BUDGETS = "1.0,0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1,0.0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flavor_arguments(parser)
    parser.add_argument("--attention", default="sdpa", choices=list(ATTENTIONS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="measure on (default cpu: fake tensors for estimated flavors such as seed)")
    parser.add_argument("--points", type=int, default=12, metavar="N",
                        help="budgets for the planner, evenly from the smallest feasible peak to none's (default 12)")
    parser.add_argument("--compile-budgets", type=_budgets, default=_budgets(DEFAULT_COMPILE_BUDGETS), metavar="B,...",
                        help=f"torch.compile activation_memory_budget values (default {DEFAULT_COMPILE_BUDGETS}; each is "
                             f"one compile, ~17 s at seed on fake tensors)")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="write the PNG")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="write the table as Markdown")


def _row(label: str, r: Measurement, none: Measurement) -> tuple[str, float, float, float]:
    return label, r.peak_bytes / MIB, r.forward_kept_bytes / MIB, (r.flops - none.flops) / 1e9


def _how(record: Measurement) -> str:
    """How the records were measured, as the table says it."""
    if record.memory_method.startswith("fake"):
        return f"fake tensors on the {record.device}: exact bytes and matmul FLOPs"
    return f"real tensors on {record.device}, {record.memory_method}"


def _gflop(value: float | None) -> str:
    return "nothing fits" if value is None else f"{value:.2f}"


def frontier_command(args: argparse.Namespace) -> None:
    from ac_bench.milp import BlockPlanner, NothingFits, SolverMissing, smallest_peak, solve, solver_name
    if args.points < 2:
        raise ReportInputError(f"--points needs at least 2 budgets, got {args.points}")
    check_output_files(plot=args.plot, markdown=args.markdown)
    check_device(args.device)
    try:
        solver = solver_name()  # a missing solver or a bad AC_BENCH_MILP_SOLVER, before measuring
    except SolverMissing as exc:
        raise ReportInputError(str(exc)) from None
    flavor = chosen_flavor(args)
    attention, device = args.attention, args.device
    cache: dict[str, Measurement] = {}

    def measure(variant: str) -> Measurement:
        if variant not in cache:
            cache[variant] = measure_variant(flavor, variant, device)
        return cache[variant]
    planner = BlockPlanner(flavor, attention, device, measure=measure)
    try:
        fig = planner.figures
        low = smallest_peak(fig)[1].peak_bytes
    except (SolverMissing, ValueError) as exc:
        raise ReportInputError(str(exc)) from None
    none = measure(f"none-{attention}")
    high = none.peak_bytes
    if low >= high:  # every budget would get the same plan: no trade to draw
        raise ReportInputError(
            f"every per-block plan of {flavor.name} ({attention}) peaks at {high / MIB:.3g} MiB, as none does: the "
            f"step's peak is not in the forward and backward (the optimizer step's, or the output head's and the "
            f"loss's), so checkpointing lowers no peak and there is no frontier; use a longer --seq-len or a deeper "
            f"flavor")
    plans, missed = [], []
    for k in range(args.points):
        budget = low + (high - low) * k // (args.points - 1)
        try:
            plans.append((budget, planner.plan(budget)))
        except NothingFits as exc:  # measured over the budget after the retries (a model miss)
            missed.append((budget, str(exc)))
    compiled = {b: measure(f"{budget_name(b)}-{attention}") for b in args.compile_budgets}
    sac = measure(f"sac-{attention}")

    lines = [f"## {flavor.name}, {attention}: the MILP's plans", "",
             f"Measured ({_how(none)}). Recompute: the step's FLOPs less "
             f"`none`'s. Solver: {solver} through PuLP, proven optimal where the gap is 0.", "",
             "| budget MiB | plan | peak MiB | kept MiB | recompute GFLOP | solver s | gap |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for budget, plan in plans:
        _, peak, kept, rec = _row(plan.policy.name, plan.record, none)
        gap = "0" if plan.solution.gap == 0.0 else "not proven"
        lines.append(f"| {budget / MIB:.1f} | `{plan.policy.name}` | {peak:.1f} | {kept:.1f} | {rec:.2f} | "
                     f"{plan.solution.seconds:.2f} | {gap} |")
    lines += [f"| {budget / MIB:.1f} | no plan measured within: {why} | | | | | |" for budget, why in missed]
    lines += ["", f"## Against torch.compile's budget sweep and `sac` ({attention})", "",
              "For each policy, the MILP solved at that policy's measured peak (same peak), and at its peak and kept "
              "bytes together (same peak and kept), predicted (exact on the CPU).", "",
              "| policy | peak MiB | kept MiB | recompute GFLOP | MILP, same peak: GFLOP | MILP, same peak and kept: GFLOP | "
              "planner at or below? |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for label, r in [*((budget_name(b), c) for b, c in compiled.items()), ("sac", sac)]:
        _, peak, kept, rec = _row(label, r, none)
        try:
            same_peak = solve(fig, r.peak_bytes).prediction.recompute_flops / 1e9
        except NothingFits:
            same_peak = None
        try:
            both = solve(fig, r.peak_bytes, kept_budget_bytes=r.forward_kept_bytes).prediction.recompute_flops / 1e9
        except NothingFits:
            both = None
        verdict = ("yes" if both is not None and both <= rec else
                   "on the peak only" if same_peak is not None and same_peak <= rec else "no")
        lines.append(f"| `{label}` | {peak:.1f} | {kept:.1f} | {rec:.2f} | {_gflop(same_peak)} | {_gflop(both)} | {verdict} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        options = (f"{flavor_options(args, flavor)} --attention {attention} --device {device} --points {args.points} "
                   f"--compile-budgets {','.join(repr(float(b)) for b in args.compile_budgets)}")
        command = (solver_prefix() + f"python -m ac_bench.report frontier {options} "
                   + (f"--plot {args.plot} " if args.plot else "") + f"--markdown {args.markdown}")
        write_text(args.markdown, f"# The MILP planner against the compiler: {flavor.name}, {attention}\n\n"
                                  f"Regenerate: `{command}`\n\n{text}")
    if args.plot:
        save_png(frontier_figure(flavor.name, attention, plans, compiled, sac, none), args.plot)
        print(f"plot written: {args.plot}")


def frontier_figure(flavor: str, attention: str, plans, compiled: dict[float, Measurement], sac: Measurement,
                    none: Measurement) -> Figure:
    """Two panels, recompute GFLOP (y) against kept MiB and against peak MiB (x): the MILP's plans
    (a step line through them), the compiler's sweep (B labelled), ``sac`` and ``none``."""
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    # The compiler's points are joined in the order of B on the kept axis, where they fall with B;
    # on the peak axis they do not, so they stand alone there.
    for ax, x_of, xlabel, joined in ((axes[0], lambda r: r.forward_kept_bytes, "kept for backward at the end of the forward (MiB)", True),
                                     (axes[1], lambda r: r.peak_bytes, "the step's peak (MiB)", False)):
        pts = sorted((x_of(p.record) / MIB, (p.record.flops - none.flops) / 1e9) for _, p in plans)
        ax.step([x for x, _ in pts], [y for _, y in pts], where="post", color="black", marker="o", markersize=4,
                label="MILP: per-block plan, fewest FLOPs per budget")
        cpts = [(x_of(r) / MIB, (r.flops - none.flops) / 1e9, b) for b, r in sorted(compiled.items())]
        ax.plot([x for x, _, _ in cpts], [y for _, y, _ in cpts], color="tab:red", marker="D", markersize=5,
                linestyle="--" if joined else "", label="torch.compile activation_memory_budget B")
        for x, y, b in cpts:
            ax.annotate(f"{b:g}", (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7, color="tab:red")
        for name, r, colour in (("sac", sac, "tab:blue"), ("none", none, "tab:gray")):
            xy = (x_of(r) / MIB, (r.flops - none.flops) / 1e9)
            ax.plot(*xy, marker="s", color=colour, linestyle="")
            ax.annotate(name, xy, xytext=(4, -10), textcoords="offset points", fontsize=8, color=colour)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("recomputed matmul FLOPs per step (GFLOP)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{flavor}, {attention}: the MILP planner against torch.compile ({none.memory_method}, {none.device})",
                 fontsize=10)
    return fig

