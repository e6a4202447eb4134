"""``python -m ac_bench.report plan``: the planner's answer for a budget, and the picture behind it.

Prints the cheapest plan that fits the budget (measured: fake tensors for estimated flavors on
the CPU), what each sublayer costs per byte saved, and, with ``--plot``, kept memory against
recomputed FLOPs for the fixed policies, the planner's frontier over a range of budgets and
torch.compile's activation-memory-budget sweep.

With ``--model`` (Llama 3 8B, 70B or 405B; Qwen3 8B or 14B) and ``--world-size`` it plans at scale: every policy
estimated for one rank of FSDP2 over that many GPUs (``ac_bench.scale``), the cheapest that fits
``--budget-gib`` per GPU (fewest recomputed FLOPs), its peak and margin, and the smallest GPU
memory each policy fits; a budget nothing fits is one line with the smallest feasible memory
and world size.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ac_bench.cli.common import add_flavor_arguments, check_device, check_output_files, chosen_flavor, flavor_options, gib_type, number, solver_prefix
from ac_bench.models import ATTENTIONS, POLICIES, budget_name
from ac_bench.outputs import byte_unit, flop_unit, gib_text
from ac_bench.planner import GIB, InfeasibleBudget, Planner
from ac_bench.record import Measurement, measure_variant
from ac_bench.report.load import ReportInputError
from ac_bench.report.plots import policy_color, save_png
from ac_bench.report.tables import write_text

MIB = 2 ** 20
#: Fixed policies drawn beside the plans (offload recomputes nothing and keeps what none keeps
#: on the CPU; compile budgets have their own curve).
FIXED_POLICIES = tuple(p for p in POLICIES if p != "offload")
DEFAULT_COMPILE_BUDGETS = "1.0,0.8,0.6,0.4,0.2,0.0"
FRONTIER_POINTS = 40
#: The largest --offload-cost (FLOPs per byte): 3e4 at the H200's rates; beyond 1e9 offloading
#: never pays, and the solver's objective coefficients (cost x bytes) outgrow a float's precision.
MAX_OFFLOAD_COST = 10 ** 9


def _budgets(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1], got {text!r}") from None
    if any(not (0.0 <= v <= 1.0) for v in values):
        raise argparse.ArgumentTypeError(f"compile budgets must lie in [0, 1], got {text!r}")
    return values


#: --budget-gib: a positive number of GiB.
_gib = gib_type("the budget")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _world_size(text: str) -> int:
    from ac_bench.scale import world_size_problem
    value = _positive_int(text)
    problem = world_size_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _offload_cost(text: str) -> int:
    """FLOPs per offloaded byte: a preset, or a whole number from 0 to MAX_OFFLOAD_COST (the
    MILP's objective counts whole FLOPs; a larger cost only says never offload)."""
    from ac_bench.blockplan import OFFLOAD_PRESETS, offload_cost
    if text.lower() in OFFLOAD_PRESETS:
        return offload_cost(*OFFLOAD_PRESETS[text.lower()])
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FLOPs per offloaded byte (a whole number) or one of "
                                         f"{', '.join(OFFLOAD_PRESETS)}, got {text!r}") from None
    if not (math.isfinite(value) and value.is_integer() and 0 <= value <= MAX_OFFLOAD_COST):
        raise argparse.ArgumentTypeError(f"the cost of an offloaded byte must be a whole number of FLOPs from 0 to "
                                         f"{MAX_OFFLOAD_COST:.0e} (leave --offload-cost out never to offload), "
                                         f"got {text!r}")
    return int(value)


#: --host-gib: GiB of host memory offloading may take, from 0 (0 offloads nothing).
_host_gib = gib_type("the host budget", zero=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ac_bench.scale import SCALE_MODELS
    add_flavor_arguments(parser)
    parser.add_argument("--seq-len", type=_positive_int, metavar="S",
                        help="sequence length (default: the flavor's; 8192 for the published shapes of --model)")
    parser.add_argument("--batch", type=_positive_int, metavar="B",
                        help="batch per GPU (default: the flavor's; 1 for the published shapes of --model)")
    scale = parser.add_argument_group("at scale (FSDP2 over --world-size GPUs, estimated for one rank)")
    scale.add_argument("--model", choices=list(SCALE_MODELS),
                       help="plan at scale for this model (transformers' LlamaForCausalLM or Qwen3ForCausalLM at the "
                            "published shape); or give --world-size with --model-spec and --flavor for your own family")
    scale.add_argument("--world-size", type=_world_size, metavar="W", help="GPUs the model is sharded over (FSDP2)")
    scale.add_argument("--mixed-precision", choices=("bf16", "none"), default=None,
                       help="bf16: FSDP2 MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32) over float32 "
                            "parameters, torchtitan's default; none: float32 throughout (default bf16)")
    scale.add_argument("--no-reshard-after-forward", action="store_true",
                       help="fully_shard(reshard_after_forward=False): keep each layer unsharded from forward to backward")
    scale.add_argument("--full-depth", action="store_true",
                       help="trace every layer instead of extrapolating from three depths (slower)")
    parser.add_argument("--attention", default="sdpa", choices=list(ATTENTIONS), help="default: %(default)s")
    parser.add_argument("--space", default="prefix", choices=["prefix", "blocks"],
                        help="prefix: plan_aA_mM, whole sublayers of the first blocks, enumerated; blocks: per block "
                             "none / full / selective per sublayer or the whole layer, solved as a MILP (needs PuLP: "
                             "pip install 'ac-bench[milp]'; default %(default)s)")
    from ac_bench.blockplan import OFFLOAD_PRESETS, offload_cost
    presets = ", ".join(f"{name} {offload_cost(*rates)}" for name, rates in OFFLOAD_PRESETS.items())
    parser.add_argument("--offload-cost", type=_offload_cost, metavar="FLOPS_PER_BYTE|h100|h200|a100",
                        help="--space blocks: add offloaded sublayers and layers (o, lo: save_on_cpu) to the space; at "
                             "scale: add whole_layers_offload (transformers' offload=True) and whole_layers; each "
                             f"byte offloaded costing this many FLOPs of recompute: a whole number from 0 to "
                             f"{MAX_OFFLOAD_COST:.0e}, or a preset, 2 x FLOP/s / host-link B/s at datasheet rates "
                             f"rounded to whole FLOPs ({presets}). On the CPU its figures come from fake tensors and "
                             f"a simulated host")
    parser.add_argument("--host-gib", type=_host_gib, metavar="GIB",
                        help="--space blocks with --offload-cost: offload at most this much host memory (0: none)")
    parser.add_argument("--budget-gib", type=_gib, required=True, metavar="GIB",
                        help="the whole step's peak (parameters, gradients, optimizer state included)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="measure on (default cpu: fake tensors for estimated flavors such as seed)")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="write the PNG: kept memory against recompute FLOPs")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the printed report as Markdown")
    parser.add_argument("--compile-budgets", type=_budgets, default=None, metavar="B,...",
                        help=f"torch.compile activation_memory_budget values for the plot's compiler sweep "
                             f"(default {DEFAULT_COMPILE_BUDGETS}; each is one compile: ~17 s at seed on fake tensors)")


def _recompute(record: Measurement, none: Measurement) -> int:
    return record.flops - none.flops


def scale_plan_command(args: argparse.Namespace) -> None:
    """``plan --model M --world-size W`` (or ``--model-spec S [--flavor F] --world-size W``, a
    family of the user's): ``ac_bench.scale.plan_at_scale``, printed (and --markdown)."""
    from ac_bench import scale
    if args.world_size is None:
        raise ReportInputError("planning at scale needs --world-size (with --model, or a --model-spec family's flavor)")
    if args.model is not None and (args.flavor is not None or args.model_spec):
        raise ReportInputError("--model names one of the published shapes; for your own family give --model-spec "
                               "and --flavor instead, not both")
    if args.plot:
        raise ReportInputError("--plot draws the single-process planner's picture; at scale the report's "
                               "`python -m ac_bench.report scale` draws peak against world size")
    check_output_files(markdown=args.markdown)
    if args.model is None and not args.model_spec and args.flavor is None:
        raise ReportInputError(f"planning at scale needs a model: --model (one of {', '.join(scale.SCALE_MODELS)}), "
                               f"or --model-spec and --flavor for your own family")
    try:
        base = scale.scale_model(args.model) if args.model is not None else chosen_flavor(args)
        model = scale.at(base, batch=args.batch, seq_len=args.seq_len)
        mp = {} if args.mixed_precision in (None, "bf16") else {"mp_param_dtype": None, "mp_reduce_dtype": None}
        setup = scale.ShardedSetup(args.world_size, reshard_after_forward=not args.no_reshard_after_forward, **mp)
        plan = scale.plan_at_scale(model, setup, int(args.budget_gib * GIB), args.attention,
                                   full_depth=args.full_depth, offload_cost=args.offload_cost)
        if plan.chosen is None:
            raise ReportInputError(scale.nothing_fits_line(plan))
    except scale.ScaleError as exc:
        raise ReportInputError(str(exc)) from None
    text = "\n".join(scale.plan_lines(plan)) + "\n"
    print(text, end="")
    if args.markdown:
        which = f"--model {args.model}" if args.model is not None else flavor_options(args, base)
        options = [which, f"--world-size {args.world_size}", f"--budget-gib {number(args.budget_gib)}",
                   f"--seq-len {model.seq_len}", f"--batch {model.batch}", f"--attention {args.attention}",
                   f"--mixed-precision {args.mixed_precision or 'bf16'}"]
        options += ["--no-reshard-after-forward"] * args.no_reshard_after_forward + ["--full-depth"] * args.full_depth
        options += [f"--offload-cost {args.offload_cost}"] * (args.offload_cost is not None)
        command = f"python -m ac_bench.report plan {' '.join(options)} --markdown {args.markdown}"
        write_text(args.markdown, f"# Checkpointing plan at scale: {model.name}, {args.world_size} GPUs of "
                                  f"{args.budget_gib:g} GiB\n\nRegenerate: `{command}`\n\n{text}")


def _refuse_unused(args: argparse.Namespace, at_scale: bool) -> None:
    """An option that this kind of plan would ignore is one line, not silently dropped."""
    if at_scale:
        why = "has no effect at scale (--world-size), which estimates each whole-model policy for one FSDP2 rank"
        unused = [("--space blocks", args.space == "blocks", why),
                  ("--host-gib", args.host_gib is not None,
                   "is for --space blocks on one GPU; at scale the table gives each policy's host memory per rank"),
                  ("--device cuda", args.device == "cuda", why),
                  ("--compile-budgets", args.compile_budgets is not None, why)]
    else:
        why = "is for planning at scale: add --world-size, or leave it out"
        unused = [("--mixed-precision", args.mixed_precision is not None, why),
                  ("--no-reshard-after-forward", args.no_reshard_after_forward, why),
                  ("--full-depth", args.full_depth, why),
                  ("--compile-budgets", args.compile_budgets is not None and not args.plot,
                   "sets the compiler sweep that --plot draws: add --plot, or leave it out")]
    for option, present, reason in unused:
        if present:
            raise ReportInputError(f"{option} {reason}")


def _shaped(args: argparse.Namespace, flavor):
    """The flavor at ``--seq-len`` and ``--batch`` where given (one GPU's plan, as at scale)."""
    changes = {k: v for k, v in (("seq_len", args.seq_len), ("batch", args.batch)) if v is not None}
    return dataclasses.replace(flavor, **changes) if changes else flavor


def _shape_line(args: argparse.Namespace, flavor) -> list[str]:
    """Where --seq-len or --batch reshaped the flavor, a first line that says so."""
    if args.seq_len is None and args.batch is None:
        return []
    return [f"{flavor.name} at sequence {flavor.seq_len}, batch {flavor.batch} (--seq-len, --batch)"]


def _shape_options(args: argparse.Namespace) -> str:
    return "".join(f" --{name} {value}" for name, value in (("seq-len", args.seq_len), ("batch", args.batch))
                   if value is not None)


def plan_command(args: argparse.Namespace) -> None:
    at_scale = args.model is not None or args.world_size is not None
    _refuse_unused(args, at_scale)
    check_device(args.device)
    if at_scale:
        scale_plan_command(args)
        return
    if args.space == "blocks":
        block_plan_command(args)
        return
    if args.offload_cost is not None or args.host_gib is not None:
        raise ReportInputError("--offload-cost and --host-gib plan offloaded sublayers and layers: add --space blocks")
    flavor = _shaped(args, chosen_flavor(args))
    check_output_files(plot=args.plot, markdown=args.markdown)  # before minutes of measuring, not after
    planner = Planner(flavor, args.attention, args.device)
    budget = int(args.budget_gib * GIB)
    try:
        plan = planner.plan(budget)
    except InfeasibleBudget as exc:
        raise ReportInputError(str(exc)) from None
    none = planner.measure("plan_a0_m0")
    economics = planner.sublayer_economics()
    # Each table in the units its largest figure fills (a tiny model's were all 0.000 GiB).
    bunit, bsize = byte_unit(max(e["bytes_saved"] for e in economics.values()))
    funit, fsize = flop_unit(max(e["recompute_flops"] for e in economics.values()))
    lines = [*_shape_line(args, flavor), f"plan: {plan.summary()}", "",
             f"per sublayer of one block ({args.attention}): bytes saved by checkpointing it, FLOPs recomputed",
             f"| sublayer | {bunit} saved | {funit} recomputed | {funit} per {bunit} saved |", "| --- | ---: | ---: | ---: |"]
    for sublayer, e in economics.items():  # the planner's FLOPs per MiB saved, in the table's units
        per = e["flops_per_mib"] / fsize * bsize / MIB
        lines.append(f"| {sublayer} | {e['bytes_saved'] / bsize:.2f} | {e['recompute_flops'] / fsize:.3f} | {per:.4f} |")
    better = min(economics, key=lambda s: economics[s]["flops_per_mib"])
    fitting = [c for c in plan.candidates if c.predicted_peak_bytes <= budget][:5]
    punit, psize = byte_unit(max((c.predicted_peak_bytes for c in fitting), default=0))
    kunit, ksize = byte_unit(max((c.kept_bytes for c in fitting), default=0))
    runit, rsize = flop_unit(max((c.recompute_flops for c in fitting), default=0))
    lines += ["", f"cheaper per byte saved: {better}", "",
              "plans predicted to fit, cheapest first (peaks predicted from the analytic model, or from the measured "
              "regions for a family without one; the chosen one measured):",
              f"| plan | checkpointed | predicted peak {punit} | kept {kunit} | recompute {runit} |",
              "| --- | --- | ---: | ---: | ---: |"]
    for c in fitting:
        lines.append(f"| {c.name} | {c.policy.describe(flavor.depth)} | {c.predicted_peak_bytes / psize:.3f} | "
                     f"{c.kept_bytes / ksize:.1f} | {c.recompute_flops / rsize:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        command = (f"python -m ac_bench.report plan {flavor_options(args, flavor)} --attention {args.attention} "
                   f"--budget-gib {number(args.budget_gib)} --device {args.device}{_shape_options(args)} "
                   + (f"--plot {args.plot} " if args.plot else "") + f"--markdown {args.markdown}")
        write_text(args.markdown, f"# Checkpointing plan: {flavor.name}, {args.attention}, "
                                  f"{args.budget_gib:g} GiB\n\nRegenerate: `{command}`\n\n{text}")
    if args.plot:
        fixed = {p: measure_variant(flavor, f"{p}-{args.attention}", args.device) for p in FIXED_POLICIES}
        compiled = {b: measure_variant(flavor, f"{budget_name(b)}-{args.attention}", args.device)
                    for b in args.compile_budgets or _budgets(DEFAULT_COMPILE_BUDGETS)}
        save_png(plan_figure(planner, plan, none, fixed, compiled), args.plot)
        print(f"plot written: {args.plot}")


def plan_figure(planner: Planner, plan, none: Measurement, fixed: dict[str, Measurement],
                compiled: dict[float, Measurement]) -> Figure:
    """Kept memory (x) against recompute FLOPs (y): fixed policies, the planner's frontier over
    budgets from the smallest feasible to none's peak, the compiler's sweep, the chosen plan."""
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cands = planner.candidates()
    low = min(c.predicted_peak_bytes for c in cands)
    high = max(c.predicted_peak_bytes for c in cands)
    frontier = {}
    for i in range(FRONTIER_POINTS + 1):
        c = planner.choose(int(low + (high - low) * i / FRONTIER_POINTS))
        if c is not None:
            frontier[c.name] = c
    pts = sorted((c.kept_bytes / MIB, c.recompute_flops / 1e9) for c in frontier.values())
    ax.step([x for x, _ in pts], [y for _, y in pts], where="post", color="black", linewidth=1.2,
            marker=".", label="planner: cheapest plan per budget (plan_aA_mM)")
    for name, r in fixed.items():
        xy = (r.forward_kept_bytes / MIB, _recompute(r, none) / 1e9)
        ax.plot(*xy, marker="o", linestyle="", color=policy_color(name))
        ax.annotate(name, xy, xytext=(4, 3), textcoords="offset points", fontsize=8)
    cpts = sorted((r.forward_kept_bytes / MIB, _recompute(r, none) / 1e9, b) for b, r in compiled.items())
    if cpts:
        ax.plot([x for x, _, _ in cpts], [y for _, y, _ in cpts], color="tab:red", marker="D", markersize=5,
                linestyle="--", label="torch.compile activation_memory_budget (B labelled)")
        for x, y, b in cpts:
            ax.annotate(f"B={b:g}", (x, y), xytext=(4, -10), textcoords="offset points", fontsize=7, color="tab:red")
    chosen = plan.record
    ax.plot(chosen.forward_kept_bytes / MIB, _recompute(chosen, none) / 1e9, marker="*", markersize=16,
            color="gold", markeredgecolor="black", linestyle="",
            label=f"chosen for {gib_text(plan.budget_bytes)} GiB: {plan.chosen.name}")
    ax.set_xlabel("kept for backward at the end of the forward (MiB)")
    ax.set_ylabel("recomputed FLOPs per step (GFLOP)")
    ax.set_title(f"{planner.flavor.name}, {planner.attention}: memory kept against recompute "
                 f"({none.memory_method}, {none.device})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def block_plan_command(args: argparse.Namespace) -> None:
    """``plan --space blocks``: the MILP's plan (``ac_bench.milp``), measured, printed (and --markdown)."""
    from ac_bench.export import export_lines
    from ac_bench.milp import BlockPlanner, NothingFits, SolverMissing
    if args.plot:
        raise ReportInputError("--plot draws the plan_aA_mM planner's picture; for per-block plans against the "
                               "compiler run `python -m ac_bench.report frontier`")
    flavor = _shaped(args, chosen_flavor(args))
    check_output_files(markdown=args.markdown)
    if args.host_gib is not None and args.offload_cost is None:
        raise ReportInputError("--host-gib bounds what offloading takes: add --offload-cost (e.g. h200)")
    planner = BlockPlanner(flavor, args.attention, args.device, offload_flops_per_byte=args.offload_cost,
                           host_budget_bytes=None if args.host_gib is None else int(args.host_gib * GIB))
    try:
        plan = planner.plan(int(args.budget_gib * GIB))
    except (NothingFits, SolverMissing, ValueError) as exc:
        raise ReportInputError(str(exc)) from None
    fig = planner.figures
    lines = [*_shape_line(args, flavor), f"plan: {plan.summary()}", "",
             "per block: the choice (attention then MLP: n none, f full recompute, s selective, p selective keeping P·V; "
             "lf/ls/lp the whole layer; o offloaded to host memory, lo the whole layer), "
             "what it adds to the bytes kept for backward in this plan (its output included, less its input "
             "where it does not keep it, which is freed after it), and what it recomputes; the plan's kept total "
             "leaves out the model's output and adds what follows the last block",
             ]
    blocks = plan.policy.blocks
    # What each block's forward adds, with the input a block does not keep (handed_on, from
    # block 1 on: block 0's is the model's) taken off its own row, not off the next one's, where
    # it is freed; the rows still add up to the plan's kept total.
    kept = [fig.of(i, c).kept + fig.neighbour_shift(i, blocks) for i, c in enumerate(blocks)]
    kept.append(fig.of(len(blocks) - 1, blocks[-1]).head)
    for i in range(1, len(blocks)):
        freed = fig.handed_on.get(blocks[i], 0)
        kept[i] -= freed
        kept[i + 1] += freed
    # Each column in the unit its largest figure fills (tiny's rows read 0.05 MiB, 0.000 GFLOP).
    figures = [fig.of(i, choice) for i, choice in enumerate(blocks)]
    kunit, ksize = byte_unit(max(abs(k) for k in kept))
    funit, fsize = flop_unit(max(f.recompute_flops for f in figures))
    ounit, osize = byte_unit(max(f.offloaded for f in figures))
    lines += [f"| block | choice | kept {kunit} | recompute {funit} | offloaded {ounit} |", "| ---: | --- | ---: | ---: | ---: |"]
    for i, (choice, f) in enumerate(zip(blocks, figures)):
        lines.append(f"| {i} | {choice} | {kept[i] / ksize:.2f} | {f.recompute_flops / fsize:.3f} | {f.offloaded / osize:.2f} |")
    after = round(kept[-1] / ksize, 2)  # not "-0.00"
    lines.append(f"| after the blocks | | {f'{after:+.2f}' if after else '0.00'} | | |")
    if fig.offload_flops_per_byte is not None:
        where = ("fake tensors and a simulated host (the CPU has no host of its own to offload to)"
                 if args.device == "cpu" else "the device")
        host = ("no host budget" if args.host_gib is None else
                f"host budget {args.host_gib:g} GiB (--host-gib), {plan.solution.prediction.offloaded_bytes / MIB:.1f} MiB used")
        lines.append(f"\noffload: each offloaded byte costs {fig.offload_flops_per_byte:,} FLOPs of recompute "
                     f"(--offload-cost); the plan's cost is {plan.solution.prediction.cost / 1e9:.3f} GFLOP-equivalent; "
                     f"{host}; measured on {where}")
    lines += ["", *export_lines(plan.policy)]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        command = (f"python -m ac_bench.report plan --space blocks {flavor_options(args, flavor)} --attention {args.attention} "
                   f"--budget-gib {number(args.budget_gib)} --device {args.device}{_shape_options(args)} "
                   f"--markdown {args.markdown}"
                   + (f" --offload-cost {args.offload_cost}" if args.offload_cost is not None else "")
                   + (f" --host-gib {number(args.host_gib)}" if args.host_gib is not None else ""))
        command = solver_prefix() + command
        write_text(args.markdown, f"# Per-block checkpointing plan: {flavor.name}, {args.attention}, "
                                  f"{args.budget_gib:g} GiB\n\nRegenerate: `{command}`\n\n{text}")
