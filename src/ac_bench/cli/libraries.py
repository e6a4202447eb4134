"""``python -m ac_bench.report libraries --out FILE``: the suite's policies next to what the
libraries' own switch gives, on published model shapes.

For each model (Llama-3-8B and Qwen3-8B by default: transformers' ``LlamaForCausalLM`` and
``Qwen3ForCausalLM`` at their published widths, ``ac_bench.scale.SCALE_MODELS``) cut to a few
layers, one process, bfloat16 parameters and compute, per-GPU batch 1, sequence 8192, AdamW: the
step measured on fake tensors on the CPU (exact bytes and FLOPs, no compute; memory method
``fake-memtracker``) for ``none``, ``native`` (the model's own
``gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``),
``whole_layers`` (the suite's policy with the libraries' semantics: every decoder layer, layer 0
included), the seed's ``full`` (attention and MLP checkpointed separately from block 1 on),
``sac`` (torchtitan's per-op save list) and the planner's plan (``ac_bench.planner``, its
per-region figures measured, ``ac_bench.regions.measure_regions``) for a budget halfway between
``whole_layers``' and ``none``'s peaks unless ``--budget-gib`` says otherwise. The table:
peak, kept bytes, recomputed FLOPs (the step's FLOPs less ``none``'s) and backward ops beyond
``none``'s, per policy; written to ``FILE`` as Markdown with the command that made it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ac_bench.cli.common import gib_type
from ac_bench.report.load import ReportInputError
from ac_bench.report.tables import write_text

DEFAULT_MODELS = "llama3-8b,qwen3-8b"
#: The fixed policies, with what each is in the libraries' vocabulary.
POLICIES = (
    ("none", "no checkpointing"),
    ("native", "the model's own `gradient_checkpointing_enable()` (non-reentrant), measured as it is"),
    ("whole_layers", "= `gradient_checkpointing_enable()`, torchtitan `FullAC`: every decoder layer, layer 0 included"),
    ("full", "the seed notebook's `full`: attention and MLP apart, block 0 left alone (no library calls this full)"),
    ("sac", "torchtitan's op-level selective AC save list (`SelectiveAC`, op mode) on every layer"),
)
GIB = 2 ** 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated scale models (default %(default)s)")
    parser.add_argument("--depth", type=int, default=4, help="decoder layers kept (default %(default)s)")
    parser.add_argument("--seq-len", type=int, default=8192, help="sequence length (default %(default)s)")
    parser.add_argument("--attention", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--budget-gib", type=_gib, default=None,
                        help="the planner's budget for the whole step (default: halfway between whole_layers' and "
                             "none's peaks)")


#: --budget-gib: a positive number of GiB, as the plan command's.
_gib = gib_type("the budget")


def model_flavor(name: str, depth: int, seq_len: int):
    """The scale model ``name`` cut to ``depth`` layers at ``seq_len``, bfloat16 throughout, one
    process (no sharding); a ReportInputError names a bad value."""
    from ac_bench import scale
    if depth < 1 or seq_len < 1:
        raise ReportInputError(f"--depth {depth} --seq-len {seq_len}: both must be 1 or more")
    try:
        model = scale.scale_model(name.strip())
    except scale.ScaleError as exc:
        raise ReportInputError(str(exc)) from None
    if depth > model.depth:  # a llama3-8b-40l is no model anyone trains
        raise ReportInputError(f"--depth {depth}: {model.name} has {model.depth} layers; give at most {model.depth}")
    return dataclasses.replace(scale.at(model, depth=depth, seq_len=seq_len), dtype="bfloat16",
                               name=f"{model.name}-{depth}l")


def libraries_command(args: argparse.Namespace) -> None:
    from ac_bench.outputs import file_problem
    from ac_bench.planner import InfeasibleBudget, Planner
    from ac_bench.record import measure_variant
    problem = file_problem(args.out)
    if problem:
        raise ReportInputError(f"--out {args.out}: {problem}")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names or len(set(names)) != len(names):
        raise ReportInputError(f"--models {args.models!r}: give one or more models, each once "
                               f"(e.g. {DEFAULT_MODELS})")
    flavors = [model_flavor(m, args.depth, args.seq_len) for m in names]
    budget_option = f" --budget-gib {args.budget_gib:g}" if args.budget_gib is not None else ""
    command = (f"python -m ac_bench.report libraries --out {args.out} --models {args.models} --depth {args.depth} "
               f"--seq-len {args.seq_len} --attention {args.attention}{budget_option}")
    lines = ["# The suite's policies next to the libraries' own switch", "", f"Regenerate: `{command}`", "",
             f"One process, per-GPU batch 1, sequence {args.seq_len}, {args.attention} attention, bfloat16 parameters "
             f"and compute, AdamW, the model's own loss; measured on fake tensors on the CPU (exact bytes and FLOPs). "
             f"Recompute: the step's FLOPs less `none`'s, in % of `none`'s; backward ops: aten ops dispatched in "
             f"backward beyond `none`'s (elementwise recompute the FLOP count does not see).", ""]
    for flavor in flavors:
        records = {}
        for policy, _ in POLICIES:
            records[policy] = measure_variant(flavor, f"{policy}-{args.attention}", "cpu")
            print(f"{flavor.name}: {policy} measured", flush=True)
        none = records["none"]
        budget = (int(args.budget_gib * GIB) if args.budget_gib is not None
                  else (records["whole_layers"].peak_bytes + none.peak_bytes) // 2)
        planner = Planner(flavor, args.attention, "cpu")
        try:
            plan = planner.plan(budget)
        except InfeasibleBudget as exc:
            raise ReportInputError(f"{flavor.name}: {exc}") from None
        plan_name = plan.chosen.name
        flat = len({r.peak_bytes for r in records.values()}) == 1
        records[plan_name] = plan.record
        meaning = dict(POLICIES)
        meaning[plan_name] = (f"the planner's plan for {budget / GIB:.2f} GiB: {plan.chosen.policy.describe(flavor.depth)} "
                              f"(no library's switch says this)")
        lines += [f"## {flavor.name}: {flavor.family}, {flavor.depth} layers of d {flavor.d_model}, {flavor.n_heads} heads "
                  f"({flavor.n_kv_heads} K/V)", "",
                  "| policy | in the libraries | peak GiB | kept GiB | recompute GFLOP (%) | backward ops (+) |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for name, r in records.items():
            extra = r.flops - none.flops
            lines.append(f"| `{name}` | {meaning[name]} | {r.peak_bytes / GIB:.2f} | {r.forward_kept_bytes / GIB:.2f} | "
                         f"{extra / 1e9:,.0f} ({extra / none.flops:.1%}) | {r.backward_ops} "
                         f"(+{r.backward_ops - none.backward_ops}) |")
        if flat:
            lines += ["", f"Every policy peaks at {none.peak_bytes / GIB:.2f} GiB here: the step's peak is not in the "
                          f"forward and backward (the optimizer step's, or the output head's and the loss's), so "
                          f"checkpointing lowers only the bytes kept and any budget that fits one fits all. Use a "
                          f"longer --seq-len or more --depth to see the trade."]
        same = records["native"].forward_kept_bytes == records["whole_layers"].forward_kept_bytes
        lines += ["", f"`native` and `whole_layers` keep {'the same' if same else 'different'} bytes "
                      f"({records['native'].forward_kept_bytes:,} and {records['whole_layers'].forward_kept_bytes:,} B).",
                  ""]
    write_text(args.out, "\n".join(lines))
    print(f"written: {args.out}")
