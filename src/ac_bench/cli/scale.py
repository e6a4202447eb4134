"""``python -m ac_bench.report scale --out DIR``: per-rank peak against world size, at scale.

For each model (``ac_bench.scale.SCALE_MODELS``), every policy estimated for one rank of FSDP2
at each world size (``ac_bench.scale.estimate``: fake process group, fake tensors, extrapolated
in depth), then written to ``DIR``: ``{model}-peak-vs-world-size.png`` (one line per policy,
the 40, 80 and 141 GiB GPUs drawn across), ``scale.md`` (per model and world size, the cheapest
policy that fits each GPU size, and every policy's peak) and ``records.json`` (every record).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ac_bench.report.load import ReportInputError
from ac_bench.report.plots import policy_color, save_png
from ac_bench.report.tables import write_text

GPU_GIB = (40, 80, 141)
DEFAULT_WORLD_SIZES = "8,64,256,1024"


def _sizes(text: str) -> list[int]:
    try:
        values = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"world sizes must be 1 or more, got {text!r}")
    from ac_bench.scale import world_size_problem
    if world_size_problem(values[-1]):
        raise argparse.ArgumentTypeError(world_size_problem(values[-1]))
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ac_bench.scale import SCALE_MODELS
    parser.add_argument("--out", type=Path, required=True, help="folder for the plots, scale.md and records.json")
    parser.add_argument("--models", default=",".join(SCALE_MODELS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--world-sizes", type=_sizes, default=_sizes(DEFAULT_WORLD_SIZES), metavar="W,...",
                        help=f"(default {DEFAULT_WORLD_SIZES})")
    parser.add_argument("--seq-len", type=int, default=8192, help="sequence length (default %(default)s)")
    parser.add_argument("--attention", default="sdpa", choices=("sdpa", "eager"))


def scale_command(args: argparse.Namespace) -> None:
    from ac_bench import scale
    from ac_bench.outputs import folder_problem
    problem = folder_problem(args.out, create=True)
    if problem:
        raise ReportInputError(f"--out {args.out}: {problem}")
    try:
        models = [scale.at(scale.scale_model(m.strip()), seq_len=args.seq_len)
                  for m in args.models.split(",") if m.strip()]
    except scale.ScaleError as exc:
        raise ReportInputError(str(exc)) from None
    command = (f"python -m ac_bench.report scale --out {args.out} --models {args.models} "
               f"--world-sizes {','.join(map(str, args.world_sizes))} --seq-len {args.seq_len} "
               f"--attention {args.attention}")
    lines = ["# Per-rank peak at scale: which policy fits 40, 80 and 141 GiB per GPU", "",
             f"Regenerate: `{command}`", "",
             f"FSDP2, per-rank batch 1, sequence {args.seq_len}, {args.attention} attention, bfloat16 compute and "
             f"float32 gradient reduction over float32 parameters, AdamW; rank 0 estimated on the fake process group "
             f"and fake tensors (`ac_bench.scale`), extrapolated from three depths (affinity checked). A cell is the "
             f"cheapest policy (fewest recomputed FLOPs) whose per-rank peak fits, with that peak in GiB; "
             f"\"-\": none fits.", ""]
    records = []
    for model in models:
        plans = {}
        for world in args.world_sizes:
            try:
                plan = scale.plan_at_scale(model, scale.ShardedSetup(world), 0, args.attention)
            except scale.ScaleError as exc:
                raise ReportInputError(str(exc)) from None
            plans[world] = plan
            records += [r.as_dict() for r in plan.records.values()]
            print(f"{model.name} at world size {world}: estimated", flush=True)
        lines += [f"## {model.name}", "", scale.describe_setup(model, scale.ShardedSetup(args.world_sizes[0])), "",
                  "| world size | " + " | ".join(f"{g} GiB" for g in GPU_GIB) + " |",
                  "| ---: | " + " | ".join("---" for _ in GPU_GIB) + " |"]
        for world, plan in plans.items():
            cells = []
            for gib in GPU_GIB:
                chosen = plan.cheapest(gib * scale.GIB)
                cells.append(f"{chosen} ({plan.records[chosen].peak_bytes / scale.GIB:.1f})" if chosen else "-")
            lines.append(f"| {world} | " + " | ".join(cells) + " |")
        names = list(next(iter(plans.values())).records)
        lines += ["", "Per-rank peak in GiB:", "", "| policy | " + " | ".join(f"W={w}" for w in plans) + " |",
                  "| --- | " + " | ".join("---:" for _ in plans) + " |"]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{p.records[name].peak_bytes / scale.GIB:.2f}"
                                                      for p in plans.values()) + " |")
        lines.append("")
        path = args.out / f"{model.name}-peak-vs-world-size.png"
        save_png(scale_figure(model.name, plans), path)
        lines += [f"![{model.name}]({path.name})", ""]
    write_text(args.out / "scale.md", "\n".join(lines))
    write_text(args.out / "records.json", json.dumps(records, indent=1, sort_keys=True) + "\n")
    print(f"written: {args.out / 'scale.md'}, the plots and records.json")


def scale_figure(model: str, plans: dict) -> Figure:
    """Per-rank peak (GiB, y, log) against world size (x, log 2), one line per policy."""
    fig = Figure(figsize=(8, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    worlds = list(plans)
    names = list(next(iter(plans.values())).records)
    for name in names:
        ys = [plans[w].records[name].peak_bytes / 2 ** 30 for w in worlds]
        ax.plot(worlds, ys, marker="o", label=name, color=policy_color(name))
    for gib in GPU_GIB:
        ax.axhline(gib, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{gib} GiB", (worlds[0], gib), xytext=(2, 2), textcoords="offset points", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("world size (GPUs, FSDP2)")
    ax.set_ylabel("per-rank peak (GiB)")
    ax.set_title(f"{model}: per-rank peak against world size (estimated, fake process group)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig
