"""A per-block plan: for every block, what is checkpointed and how (``ac_bench.milp`` chooses it).

Each block gets one of twenty-four choices, written as two letters:

- per sublayer, attention's letter then the MLP's: ``n`` nothing (autograd keeps what it keeps),
  ``f`` full recompute (``torch.utils.checkpoint`` around the sublayer: it keeps only its input),
  ``s`` selective (the same region with ``sac``'s per-op save list: matmul and SDPA outputs
  saved, the rest recomputed; ``ac_bench.models.ac.selective``), and for attention also ``p``:
  ``s`` that also saves the region's second batched matmul, the attention output P·V, so that
  eager attention recomputes only its scores (QK^T and the softmax), not P·V (what
  torch.compile's min-cut partitioner does; ``sac``'s list, torchtitan's, has no ``bmm``): ``nn``,
  ``nf``, ``ns``, ``fn``, ``ff``, ``fs``, ``sn``, ``sf``, ``ss``, ``pn``, ``pf``, ``ps``;
- the whole layer as one region, layer 0 included (what transformers' and torchtitan's full AC
  wrap): ``lf`` full recompute, ``ls`` and ``lp`` selective with those save lists;
- offloaded, ``o``: a sublayer (``on``, ``no``, ``oo``, ``fo``, ``of``, ``so``, ``os``, ``po``)
  or the whole layer (``lo``): nothing recomputed, everything the region saves for backward
  (its input included) sent to host memory in its forward and brought back in its backward
  (``save_on_cpu``, pinned, through ``HostOffloadWrapper``; torch's ``OffloadWrapper`` does the
  same). On the CPU the device is its own host and nothing moves, as for the ``offload``
  policy, except under ``simulated_host`` on fake tensors (the planner's figures).

A whole layer keeps one input where two checkpointed sublayers keep two (the MLP's input is
rebuilt), at the price of recomputing the attention's output projection.

The name lists the blocks' codes in order, runs written once with their length, joined by dots:
``blocks_ff3.fs.nn8`` is ``ff`` in blocks 0-2, ``fs`` in block 3, ``nn`` in blocks 4-11. It
parses back to the same policy and is written in one way only (runs merged, no count of 1).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from ac_bench.models.ac.base import Policy, sublayer_attribute
from ac_bench.models.ac.offload import HostOffloadWrapper
from ac_bench.models.ac.selective import MATMUL_OPS, SelectiveAC, _ops, _policy_fn

#: The choices per sublayer region: nothing, full recompute, selective (sac's save list), and
#: for attention selective with the attention output saved too.
REGION_CHOICES: tuple[str, ...] = ("n", "f", "s")
ATTENTION_CHOICES: tuple[str, ...] = (*REGION_CHOICES, "p")
#: The choices that offload a region's saved tensors to host memory rather than recompute: the
#: whole layer, or a sublayer next to any choice of the other (``o``).
OFFLOAD_CHOICES: tuple[str, ...] = ("lo",) + tuple(
    a + m for a, m in itertools.product((*ATTENTION_CHOICES, "o"), (*REGION_CHOICES, "o")) if "o" in a + m)
#: Every choice of one block: attention letter + MLP letter, or the whole layer (``l`` + f, s or
#: p), then the offloading ones (``OFFLOAD_CHOICES``).
BLOCK_CHOICES: tuple[str, ...] = tuple(a + m for a, m in itertools.product(ATTENTION_CHOICES, REGION_CHOICES)) + (
    "lf", "ls", "lp", *OFFLOAD_CHOICES)
#: The selective regions' save list and rule: the ``sac`` policy's.
_SAC = SelectiveAC("sac", sublayers=("attn", "mlp"))
_BMM = torch.ops.aten.bmm.default

_TOKEN = r"(?:[nfspo][nfso]|l[fspo])(?:[1-9]\d*)?"


def _keep_attention_output(meta: dict, sac_policy, ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """sac's rule, and every second ``bmm`` of the region (P·V, after QK^T) saved."""
    if func is _BMM:
        key = "bmm_recompute" if ctx.is_recompute else "bmm_forward"
        meta[key] += 1
        return CheckpointPolicy.MUST_SAVE if meta[key] % 2 == 0 else CheckpointPolicy.PREFER_RECOMPUTE
    return sac_policy(ctx, func, *args, **kwargs)


def keep_attention_output_context_fn():
    """A fresh pair of SAC contexts per checkpointed call: ``sac``'s, and P·V saved."""
    meta: dict = defaultdict(int)
    sac_policy = partial(_policy_fn, _ops(tuple(_SAC.save_ops)), _ops(MATMUL_OPS), _SAC.every_second_matmul, meta)
    return create_selective_checkpoint_contexts(partial(_keep_attention_output, meta, sac_policy))


def encode_blocks(blocks: tuple[str, ...]) -> str:
    """``("ff", "ff", "nn")`` -> ``blocks_ff2.nn``: runs written once with their length."""
    runs = [(code, len(list(group))) for code, group in itertools.groupby(blocks)]
    return "blocks_" + ".".join(code if n == 1 else f"{code}{n}" for code, n in runs)


@dataclass(frozen=True)
class BlockPlanAC(Policy):
    """Per block one of ``BLOCK_CHOICES`` (``blocks``: one code per block, block 0 first)."""

    blocks: tuple[str, ...] = ()

    kind: ClassVar[str] = "blocks"
    name_grammar: ClassVar[str | None] = ("blocks_CODE[N].CODE[N]... (per block: attention n/f/s/p then MLP n/f/s, "
                                          "or lf/ls/lp for the whole layer; o offloads a sublayer, lo the layer; e.g. blocks_ff3.fs.nn8)")
    hidden_from_saved_tensors_hooks: ClassVar[str | None] = _SAC.hidden_from_saved_tensors_hooks

    @classmethod
    def from_name(cls, name: str) -> Policy | None:
        """``blocks_ff3.fs.nn8``: the per-block codes, run-length encoded."""
        if not name.startswith("blocks_"):
            return None
        body = name.removeprefix("blocks_")
        if not re.fullmatch(rf"{_TOKEN}(?:\.{_TOKEN})*", body):
            bad = next((t for t in body.split(".") if not re.fullmatch(_TOKEN, t)), body)
            hint = " (p, saving P·V, is for attention only)" if bad[1:2] == "p" else ""
            raise ValueError(f"checkpointing policy {name!r}: {bad!r} is not a block code{hint}; write blocks_ then per "
                             f"block a code ({', '.join(BLOCK_CHOICES)}) with an optional run length, joined by dots, "
                             f"e.g. blocks_ff3.fs.nn8")
        blocks: list[str] = []
        for token in body.split("."):
            blocks += [token[:2]] * int(token[2:] or 1)
        policy = cls.of(tuple(blocks))
        if policy.name != name:
            raise ValueError(f"checkpointing policy {name!r}: write it as {policy.name} (runs merged, no count of 1)")
        return policy

    @classmethod
    def of(cls, blocks: tuple[str, ...] | list[str]) -> "BlockPlanAC":
        blocks = tuple(blocks)
        return cls(encode_blocks(blocks), blocks=blocks)

    def __post_init__(self) -> None:
        bad = sorted({c for c in self.blocks if c not in BLOCK_CHOICES})
        if not self.blocks or bad:
            raise ValueError(f"policy {self.name!r}: needs one code per block from {', '.join(BLOCK_CHOICES)}"
                             + (f"; got {', '.join(bad)}" if bad else ""))

    def check_depth(self, depth: int) -> None:
        if len(self.blocks) != depth:
            raise ValueError(f"policy {self.name!r} plans {len(self.blocks)} blocks; the model has {depth}")

    def regions(self, depth: int) -> list[tuple[int, str]]:
        """``(block, region)`` of every checkpointed region: ``attn``, ``mlp`` or ``layer``
        (an offloaded region is not checkpointed)."""
        self.check_depth(depth)
        out = []
        for block, code in enumerate(self.blocks):
            if code == "lo":
                continue
            if code[0] == "l":
                out.append((block, "layer"))
            else:
                out += [(block, sub) for sub, letter in zip(("attn", "mlp"), code) if letter not in "no"]
        return out

    def apply(self, model: nn.Module) -> nn.Module:
        """Wrap the regions in place with ``checkpoint_wrapper`` (state-dict keys kept), the
        selective ones with ``sac``'s ``context_fn``."""
        self.check_depth(len(model.blocks))
        for i, code in enumerate(self.blocks):
            if code == "lo":
                model.blocks[i] = HostOffloadWrapper(model.blocks[i])
                continue
            if code[0] == "l":
                model.blocks[i] = self._wrap(model.blocks[i], code[1])
                continue
            block = model.blocks[i]
            for sublayer, letter in zip(("attn", "mlp"), code):
                if letter != "n":
                    attribute = sublayer_attribute(model, sublayer)
                    setattr(block, attribute, self._wrap(getattr(block, attribute), letter))
        return model

    def _wrap(self, module: nn.Module, letter: str) -> nn.Module:
        if letter == "o":
            return HostOffloadWrapper(module)
        kwargs = _SAC.wrap_kwargs() if letter in "sp" else {}
        if letter == "p":
            kwargs["context_fn"] = keep_attention_output_context_fn
        return checkpoint_wrapper(module, checkpoint_impl=CheckpointImpl.NO_REENTRANT,
                                  preserve_rng_state=self.preserve_rng_state, **kwargs)

    def describe(self) -> str:
        """``blocks 0-2: ff, block 3: fs, ...`` (attention then MLP; lf/ls/lp whole layer; lo offloaded)."""
        parts, start = [], 0
        for code, group in itertools.groupby(self.blocks):
            n = len(list(group))
            parts.append(f"block {start}: {code}" if n == 1 else f"blocks {start}-{start + n - 1}: {code}")
            start += n
        return ", ".join(parts)
