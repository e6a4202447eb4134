"""``torch.utils.checkpoint.checkpoint_sequential`` over the blocks."""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from ac_bench.models.ac.base import Policy, parse_count


@dataclass(frozen=True)
class SequentialAC(Policy):
    """The blocks in ``segments`` segments (default ``round(sqrt(depth))``, Chen et al. 2016),
    as ``checkpoint_sequential`` makes them: ``depth // segments`` blocks per segment, every
    segment but the last checkpointed, the last one (with the remainder) run normally.

    Block 0 is inside the first checkpointed segment, unlike the region policies: that segment
    keeps only the model's input, which is alive anyway, and recomputes its blocks.
    """

    segments: int | None = None

    kind: ClassVar[str] = "sequential"
    composition: ClassVar[str | None] = "sequential"

    name_grammar: ClassVar[str | None] = "sequential_K (K >= 1)"

    @classmethod
    def from_name(cls, name: str) -> Policy | None:
        """``sequential_K``: ``checkpoint_sequential`` in K segments."""
        k = parse_count(r"sequential_(\d+)", name, 1, "sequential_K needs K >= 1")
        return None if k is None else cls(f"sequential_{k}", segments=k)

    def __post_init__(self) -> None:
        if self.segments is not None and self.segments < 1:
            raise ValueError(f"policy {self.name!r}: segments must be >= 1, got {self.segments}")

    def segments_for(self, depth: int) -> int:
        k = self.segments if self.segments is not None else max(1, round(math.sqrt(depth)))
        if k > depth:
            raise ValueError(f"policy {self.name!r}: {k} segments for a model of depth {depth}; "
                             f"use at most {depth}")
        return k

    def segment_ranges(self, depth: int) -> list[tuple[range, bool]]:
        """``(blocks, checkpointed)`` per segment, as ``checkpoint_sequential`` splits them."""
        k = self.segments_for(depth)
        size = depth // k
        ranges = [(range(i * size, (i + 1) * size), True) for i in range(k - 1)]
        return ranges + [(range((k - 1) * size, depth), False)]

    def apply(self, model: nn.Module) -> nn.Module:
        """Replace the model instance's forward (the class and state-dict keys stay)."""
        k = self.segments_for(len(model.blocks))
        preserve = self.preserve_rng_state

        def forward(self_: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return checkpoint_sequential(list(self_.blocks), k, x, use_reentrant=False,
                                         preserve_rng_state=preserve)

        model.forward = types.MethodType(forward, model)
        return model
