"""Per-op selective checkpointing (SAC): inside each checkpointed sublayer, a policy function
decides per op whether its output is saved or recomputed
(``torch.utils.checkpoint.create_selective_checkpoint_contexts``).

``sac`` follows torchtitan's op-level selective AC (torchtitan/distributed/activation_checkpoint.py):
the outputs of the compute-heavy ops in its save list are saved, except every second matmul of
a region, which is recomputed; everything else (LayerNorm, ReLU, softmax, views, copies) is
recomputed. torchtitan's list names ``aten.mm`` and the CUDA SDPA kernels; this model's linear
layers have biases, so ``aten.addmm`` is listed too, and the CPU flash kernel is listed so the
CPU run saves what CUDA saves. ``aten.bmm`` is *not* in the list, so with eager attention
``sac-eager`` recomputes QK^T, the softmax and PV in backward and does not keep the
heads x seq x seq probabilities; with sdpa the fused kernel's outputs are kept and nothing
matmul-sized is recomputed. In each sublayer the first matmul (in_proj, fc1) is saved and the
second (out_proj, fc2) is not, and no backward needs the second's output.

``core_attn`` is Megatron-LM's selective recompute (``recompute_modules=["core_attn"]``) on this
model: in the attention sublayers only, LayerNorm and the input projection are saved and the
attention core (scores, softmax, dropout, probabilities x values, or the fused SDPA kernel) is
recomputed.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import ClassVar

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from ac_bench.models.ac.region import RegionAC

#: Whether this torch's ``checkpoint`` takes ``respect_saved_tensors_hooks`` (2.14 on).
RESPECTS_SAVED_TENSORS_HOOKS = "respect_saved_tensors_hooks" in inspect.signature(torch.utils.checkpoint.checkpoint).parameters

#: Matmul ops that the every-second-matmul rule counts.
MATMUL_OPS: tuple[str, ...] = ("aten.mm.default", "aten.addmm.default")

#: torchtitan's save list, with addmm (biased linears) and the CPU flash SDPA kernel added.
SAC_SAVE_OPS: tuple[str, ...] = (
    "aten.mm.default",
    "aten.addmm.default",
    "aten._scaled_dot_product_efficient_attention.default",
    "aten._scaled_dot_product_flash_attention.default",
    "aten._scaled_dot_product_cudnn_attention.default",
    "aten._scaled_dot_product_attention_math.default",
    "aten._scaled_dot_product_fused_attention_overrideable.default",
    "aten._scaled_dot_product_flash_attention_for_cpu.default",
)

#: core_attn saves the LayerNorm and the input projection (the first matmul).
CORE_ATTENTION_OPS: tuple[str, ...] = ("aten.native_layer_norm.default", "aten.mm.default", "aten.addmm.default")


def _op(name: str):
    """``"aten.mm.default"`` -> ``torch.ops.aten.mm.default``."""
    namespace, packet, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), packet), overload)


@lru_cache(maxsize=None)
def _ops(names: tuple[str, ...]) -> frozenset:
    """The ops of ``names``, resolved once per list (context_fn runs on every checkpointed call)."""
    return frozenset(_op(n) for n in names)


def _policy_fn(save: frozenset, matmuls: frozenset, every_second_matmul: bool, meta: dict,
               ctx, func, *args, **kwargs) -> CheckpointPolicy:
    mode = "recompute" if ctx.is_recompute else "forward"
    if func in matmuls:
        meta[mode] += 1
    to_save = func in save and not (every_second_matmul and func in matmuls and meta[mode] % 2 == 0)
    return CheckpointPolicy.MUST_SAVE if to_save else CheckpointPolicy.PREFER_RECOMPUTE


@dataclass(frozen=True)
class SelectiveAC(RegionAC):
    """A region policy whose regions save the outputs of ``save_ops`` and recompute the rest.

    ``every_second_matmul``: the 2nd, 4th, ... matmul of a region is recomputed even when listed
    (torchtitan's rule, which halves what the matmuls keep).
    """

    save_ops: tuple[str, ...] = SAC_SAVE_OPS
    every_second_matmul: bool = True

    kind: ClassVar[str] = "selective"
    hidden_from_saved_tensors_hooks: ClassVar[str | None] = (
        "selective checkpointing keeps the outputs it saves in its own cache, which "
        "saved_tensors_hooks do not see; see forward_kept_bytes")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.save_ops:
            try:
                _op(name)
            except (AttributeError, ValueError):
                raise ValueError(f"policy {self.name!r}: no such op {name!r} in this PyTorch "
                                 f"(write ops as 'aten.mm.default')") from None

    def context_fn(self):
        """A fresh pair of SAC contexts per checkpointed call, with its own matmul counter."""
        return create_selective_checkpoint_contexts(
            partial(_policy_fn, _ops(tuple(self.save_ops)), _ops(MATMUL_OPS), self.every_second_matmul,
                    defaultdict(int)))

    def wrap_kwargs(self) -> dict:
        """``context_fn``, and where this torch has the choice (2.14 on),
        ``respect_saved_tensors_hooks=False``: what SAC saves stays out of surrounding
        ``saved_tensors_hooks``, as in every earlier torch. torch 2.14.1 warns (FutureWarning) that
        a future release will route them through the hooks by default; that would change what
        ``offload`` moves and what ``saved_bytes`` sees (null for SAC policies today), so the
        suite keeps one behaviour across versions until it measures the other on purpose."""
        kwargs = {"context_fn": self.context_fn}
        if RESPECTS_SAVED_TENSORS_HOOKS:
            kwargs["respect_saved_tensors_hooks"] = False
        return kwargs
