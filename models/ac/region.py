"""Region policies: whole sublayers of chosen blocks run under ``torch.utils.checkpoint``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

from ac_bench.models.ac.base import SUBLAYERS, Policy, parse_count, sublayer_attribute


@dataclass(frozen=True)
class RegionAC(Policy):
    """Which sublayers of which blocks are checkpointed: blocks ``range(first_block, depth,
    block_step)``, non-reentrant unless ``use_reentrant``. The notebook's five strategies
    (``none``, ``full``, ``attn``, ``mlp``, ``every_other``) and ``every_N`` are region policies.

    Block 0 is never checkpointed by default: its input does not require grad, and recomputing
    the first block gains nothing (its input is kept alive anyway).
    """

    sublayers: tuple[str, ...] = ()
    first_block: int = 1
    block_step: int = 1
    use_reentrant: bool = False

    kind: ClassVar[str] = "region"
    name_grammar: ClassVar[str | None] = "every_N (N >= 2)"
    composition: ClassVar[str | None] = "regions"

    @classmethod
    def from_name(cls, name: str) -> Policy | None:
        """``every_N``: both sublayers of blocks 1, 1+N, ... (``every_2`` is ``every_other``)."""
        n = parse_count(r"every_(\d+)", name, 2, "every_N needs N >= 2")
        if n is None:
            return None
        return cls("every_other" if n == 2 else f"every_{n}", sublayers=("attn", "mlp"), block_step=n)

    def __post_init__(self) -> None:
        bad = [s for s in self.sublayers if s not in SUBLAYERS]
        if bad:
            raise ValueError(f"policy {self.name!r}: unknown sublayers {bad}; valid: {SUBLAYERS}")
        if self.block_step < 1 or self.first_block < 0:
            raise ValueError(f"policy {self.name!r}: block_step must be >= 1 and first_block >= 0")

    def checkpointed_blocks(self, depth: int) -> range:
        """Indices of the blocks whose ``sublayers`` are checkpointed."""
        if not self.sublayers:
            return range(0)
        return range(self.first_block, depth, self.block_step)

    def is_checkpointed(self, block: int, sublayer: str, depth: int) -> bool:
        return sublayer in self.sublayers and block in self.checkpointed_blocks(depth)

    def regions(self, depth: int) -> list[tuple[int, str]]:
        """``(block, sublayer)`` of every checkpointed sublayer."""
        return [(b, s) for b in self.checkpointed_blocks(depth) for s in self.sublayers]

    def wrap_kwargs(self) -> dict:
        """Extra keyword arguments for ``torch.utils.checkpoint.checkpoint`` (none here)."""
        return {}

    def apply(self, model: nn.Module) -> nn.Module:
        """Wrap the sublayers in place with ``checkpoint_wrapper``, which keeps state-dict keys."""
        impl = CheckpointImpl.REENTRANT if self.use_reentrant else CheckpointImpl.NO_REENTRANT
        for i, sublayer in self.regions(len(model.blocks)):
            block, attribute = model.blocks[i], sublayer_attribute(model, sublayer)
            module: nn.Module = getattr(block, attribute)
            setattr(block, attribute, checkpoint_wrapper(
                module, checkpoint_impl=impl, preserve_rng_state=self.preserve_rng_state,
                **self.wrap_kwargs()))
        return model
