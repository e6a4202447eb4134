"""A planner's plan: the attention sublayers of the first ``attn_blocks`` blocks and the MLP
sublayers of the first ``mlp_blocks`` blocks run under ``torch.utils.checkpoint``.

``ac_bench.planner`` picks the counts for a memory budget. Why the *first* blocks: a checkpointed
sublayer keeps the same bytes and recomputes the same FLOPs in any block, but its
recomputation happens when backward reaches it; backward runs from the last block to the
first, freeing each block's activations, so recomputing in the first blocks happens when the
least is left alive. (Block 0's attention keeps nothing at all when checkpointed: its input is
the model's input.) So for a given number of checkpointed sublayers of each type, the first
blocks give the lowest peak at the same cost; the planner's self-test checks this claim
against every subset at the ``tiny`` flavor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from ac_bench.models.ac.base import Policy
from ac_bench.models.ac.region import RegionAC


@dataclass(frozen=True)
class PlanAC(RegionAC):
    """Region policy named ``plan_a{A}_m{M}``: attention checkpointed in blocks ``0..A-1``,
    the MLP in blocks ``0..M-1`` (block 0 included, unlike the notebook's strategies)."""

    attn_blocks: int = 0
    mlp_blocks: int = 0

    kind: ClassVar[str] = "plan"
    name_grammar: ClassVar[str | None] = "plan_aA_mM (a planner's plan)"

    @classmethod
    def from_name(cls, name: str) -> Policy | None:
        """``plan_aA_mM``: attention checkpointed in blocks 0..A-1, the MLP in blocks 0..M-1."""
        m = re.fullmatch(r"plan_a(\d+)_m(\d+)", name)
        if m is None:
            return None
        a, mlp = (int(g) for g in m.groups())
        if name != f"plan_a{a}_m{mlp}":
            raise ValueError(f"checkpointing policy {name!r}: write the block counts without leading zeros, "
                             f"plan_a{a}_m{mlp}")
        return cls.of(a, mlp)

    def __post_init__(self) -> None:
        if self.attn_blocks < 0 or self.mlp_blocks < 0:
            raise ValueError(f"policy {self.name!r}: block counts must be >= 0")

    @classmethod
    def of(cls, attn_blocks: int, mlp_blocks: int) -> "PlanAC":
        return cls(f"plan_a{attn_blocks}_m{mlp_blocks}", attn_blocks=attn_blocks, mlp_blocks=mlp_blocks)

    def params(self) -> dict:
        return {"attn_blocks": self.attn_blocks, "mlp_blocks": self.mlp_blocks,
                "preserve_rng_state": self.preserve_rng_state}

    def check_depth(self, depth: int) -> None:
        if max(self.attn_blocks, self.mlp_blocks) > depth:
            raise ValueError(f"policy {self.name!r} checkpoints {max(self.attn_blocks, self.mlp_blocks)} blocks "
                             f"of a model of depth {depth}; use at most {depth}")

    def regions(self, depth: int) -> list[tuple[int, str]]:
        self.check_depth(depth)
        return sorted([(b, "attn") for b in range(self.attn_blocks)] + [(b, "mlp") for b in range(self.mlp_blocks)])

    def is_checkpointed(self, block: int, sublayer: str, depth: int) -> bool:
        self.check_depth(depth)
        return block < (self.attn_blocks if sublayer == "attn" else self.mlp_blocks)

    def describe(self, depth: int) -> str:
        """``attention in blocks 0-3, MLP in none``."""
        def blocks(n: int) -> str:
            return "no block" if n == 0 else ("block 0" if n == 1 else f"blocks 0-{n - 1}")
        return f"attention in {blocks(self.attn_blocks)}, MLP in {blocks(self.mlp_blocks)} (of {depth})"
