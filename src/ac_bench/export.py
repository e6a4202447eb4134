"""A per-block plan (``blocks_...``) written as the frameworks people train with take it, where
it fits their vocabulary, and why not where it does not.

- torchtitan: the ``[activation_checkpoint]`` section of its job config (``ActivationCheckpoint``:
  ``mode`` = ``none`` / ``full`` / ``selective``, ``selective_ac_option`` = ``op`` or an integer
  N as a string), applied per ``TransformerBlock`` by ``torchtitan/distributed/activation_checkpoint.py``;
  ``op`` saves the outputs of its save list (``aten.mm``, the SDPA kernels, ...), every second
  ``mm`` recomputed, and N wraps every N-th block whole (its counter starts at 1: blocks N-1,
  2N-1, ... counted from 0).
- Megatron-LM: ``TransformerConfig``'s ``recompute_granularity`` (``full`` / ``selective``),
  ``recompute_method`` (``uniform`` / ``block``; full only), ``recompute_num_layers`` (block: the
  first N layers of each pipeline stage) and ``recompute_modules`` (selective, every layer:
  ``core_attn``, ``mlp``, ``layernorm``, ...).
- transformers: ``model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=...,
  every_n_layers=N)`` (5.x: the kwargs go to ``torch.utils.checkpoint.checkpoint`` around every
  N-th decoder layer from layer 0; ``context_fn`` there makes it selective). 5.24 renames it
  ``activation_checkpointing_enable(activation_checkpointing_kwargs=..., every_n_layers=N)`` and
  keeps the old name as a deprecated alias (a FutureWarning each call; removed in v6); 5.18 has
  only the old name, so the export writes that and its note names the new one. Its
  ``offload=True`` (5.18 and 5.24) wraps each of those checkpoints in ``save_on_cpu``: the layer
  is still recomputed, and what the checkpoint keeps (the layer's inputs) goes to host memory.

Each framework applies one setting to every layer (or every N-th, or the first N), whole
layers only (Megatron's modules aside), so a plan that mixes choices across blocks, or
checkpoints attention and MLP apart (Megatron's ``mlp`` aside), does not fit; the exporter says
so instead of writing an approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ac_bench.models import BlockPlanAC
from ac_bench.models.ac.blocks import OFFLOAD_CHOICES
from ac_bench.models.ac.selective import SAC_SAVE_OPS

#: How a selective region's ``context_fn`` is written for transformers (a callable, not data):
#: ``sac``'s, and the one that also saves the attention output (``p``).
SAC_CONTEXT_FN = "ac_bench.models.SelectiveAC('sac', sublayers=('attn', 'mlp')).context_fn"
KEEP_ATTENTION_OUTPUT_CONTEXT_FN = "ac_bench.models.ac.blocks.keep_attention_output_context_fn"


@dataclass(frozen=True)
class Export:
    """One framework's configuration for a plan (``config`` None where the plan does not fit its
    vocabulary) and a one-line note: what it means there, or why it does not fit."""

    framework: str
    config: dict | None
    note: str


def _mixed(blocks: tuple[str, ...]) -> str:
    return f"the plan mixes {', '.join(sorted(set(blocks)))} across blocks"


def torchtitan(policy: BlockPlanAC) -> Export:
    blocks, d = policy.blocks, len(policy.blocks)
    name = "torchtitan"
    if set(blocks) == {"nn"}:
        return Export(name, {"mode": "none"}, "no checkpointing")
    if set(blocks) == {"lf"}:
        return Export(name, {"mode": "full"}, "every TransformerBlock under checkpoint_wrapper")
    if set(blocks) == {"ls"}:
        return Export(name, {"mode": "selective", "selective_ac_option": "op"},
                      f"op-level SAC on every block; its save list lacks {', '.join(_beyond_torchtitan())} "
                      f"(this model's biased linears and the CPU flash kernel), which this plan saves")
    for n in range(2, d + 1):
        if blocks == tuple("lf" if (i + 1) % n == 0 else "nn" for i in range(d)):
            return Export(name, {"mode": "selective", "selective_ac_option": str(n)},
                          f"full AC on one block in every {n} (blocks {n - 1}, {2 * n - 1}, ... counted from 0)")
    why = (_mixed(blocks) if len(set(blocks)) > 1 else
           "its save list keeps the attention output (bmm), torchtitan's op list no bmm" if blocks[0] == "lp" else
           f"every block is {blocks[0]}: attention and MLP apart")
    return Export(name, None, f"does not fit: torchtitan applies one mode to whole TransformerBlocks (all, every N-th "
                              f"from block N-1, or op-level SAC on all); {why}")


def _beyond_torchtitan() -> list[str]:
    return [op for op in SAC_SAVE_OPS if op in ("aten.addmm.default", "aten._scaled_dot_product_flash_attention_for_cpu.default")]


def megatron(policy: BlockPlanAC) -> Export:
    blocks, d = policy.blocks, len(policy.blocks)
    name = "Megatron-LM"
    if set(blocks) == {"nn"}:
        return Export(name, {"recompute_granularity": None}, "no recomputation")
    k = next((k for k in range(1, d + 1) if blocks == ("lf",) * k + ("nn",) * (d - k)), None)
    if k is not None:
        return Export(name, {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": k},
                      f"the first {k} layers recomputed whole (per pipeline stage: this is one stage)")
    if set(blocks) == {"nf"}:
        return Export(name, {"recompute_granularity": "selective", "recompute_modules": ["mlp"]},
                      "the dense MLP of every layer; Megatron's mlp region starts after pre_mlp_layernorm, so it also "
                      "keeps the LayerNorm's output, one hidden-sized tensor per layer more than this plan")
    if any("s" in c or "p" in c for c in blocks):
        why = "its selective regions save per op (sac's list), for which Megatron has no module (core_attn recomputes the attention core only)"
    elif len(set(blocks)) > 1:
        why = _mixed(blocks)
    else:
        why = f"every layer is {blocks[0]}: Megatron's modules recompute the dense MLP (mlp) or the attention core (core_attn), not the attention sublayer"
    return Export(name, None, f"does not fit: full recompute is whole layers (the first N, or uniform groups) and "
                              f"selective recompute applies its modules to every layer; {why}")


def transformers(policy: BlockPlanAC) -> Export:
    blocks, d = policy.blocks, len(policy.blocks)
    name = "transformers"
    if set(blocks) == {"nn"}:
        return Export(name, {}, "gradient checkpointing left off")
    context = {"lf": {}, "ls": {"context_fn": SAC_CONTEXT_FN}, "lp": {"context_fn": KEEP_ATTENTION_OUTPUT_CONTEXT_FN}}
    for code in ("lf", "ls", "lp"):
        for n in range(1, d + 1):
            if blocks == tuple(code if i % n == 0 else "nn" for i in range(d)):
                kwargs = {"use_reentrant": False} | context[code]
                where = "every decoder layer" if n == 1 else f"one decoder layer in every {n}, from layer 0"
                return Export(name, {"gradient_checkpointing_kwargs": kwargs, "every_n_layers": n},
                              f"model.gradient_checkpointing_enable(**config): {where} (transformers 5.24 and "
                              f"newer: activation_checkpointing_enable, the kwargs as activation_checkpointing_kwargs)"
                              + ("; context_fn is Python, not data: pass the object named" if code != "lf" else ""))
    why = _mixed(blocks) if len(set(blocks)) > 1 else f"every layer is {blocks[0]}: attention and MLP apart"
    return Export(name, None, f"does not fit: transformers checkpoints whole decoder layers (every N-th from layer 0) "
                              f"with one set of checkpoint arguments; {why}")


#: Why a plan that offloads (``o``, ``lo``) is not exported, per framework.
OFFLOAD_NOT_EXPORTED = {
    "torchtitan": "torchtitan's activation_checkpoint settings have no activation offload",
    "Megatron-LM": "Megatron's layer offload (cpu_offloading, cpu_offloading_num_layers; Transformer Engine's "
                   "get_cpu_offload_context) copies asynchronously, overlapped with compute, which is not what this "
                   "plan measured and costed (save_on_cpu: synchronous copies); apply the plan with ac_bench's policy",
    "transformers": "gradient_checkpointing_enable(offload=True) recomputes every checkpointed layer and offloads "
                    "only the checkpoint's inputs, while this plan's offloaded regions recompute nothing and offload "
                    "every tensor they save; wrap those regions with "
                    "torch.distributed.algorithms._checkpoint.checkpoint_wrapper.offload_wrapper (save_on_cpu, pinned)",
}


def export_all(policy: BlockPlanAC) -> list[Export]:
    """The plan for torchtitan, Megatron-LM and transformers (none of them where it offloads a
    region: ``OFFLOAD_NOT_EXPORTED`` says why). Raises TypeError for a policy that is not a
    per-block plan (``every_3``, ``sac``: name it as a ``blocks_...`` plan to export it)."""
    if not isinstance(policy, BlockPlanAC):
        raise TypeError(f"{policy.name}: only per-block plans (blocks_..., what plan --space blocks chooses) are "
                        f"exported; write it as one, e.g. blocks_lf12 for every block whole")
    if any(c in OFFLOAD_CHOICES for c in policy.blocks):
        return [Export(name, None, f"does not fit: the plan offloads to host memory (o, lo); {why}")
                for name, why in OFFLOAD_NOT_EXPORTED.items()]
    return [torchtitan(policy), megatron(policy), transformers(policy)]


def export_lines(policy: BlockPlanAC) -> list[str]:
    """The exports as the plan command prints them (and its Markdown renders them): a list item
    per framework, and the save list."""
    lines = [f"exported ({policy.name}):"]
    for e in export_all(policy):
        lines.append(f"- {e.framework}: {e.config!r}: {e.note}" if e.config is not None else f"- {e.framework}: {e.note}")
    if any("s" in c for c in policy.blocks):
        lines.append(f"- the selective regions' save list (torchtitan's _save_list form): "
                     f"{', '.join('torch.ops.' + op for op in SAC_SAVE_OPS)}; every second mm/addmm of a region recomputed")
    return lines
