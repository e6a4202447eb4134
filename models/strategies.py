"""Activation-checkpointing strategies as data, applied to an unmodified model.

As in torchtitan's ``apply_ac``: the model class never changes; one function wraps the
chosen sublayers of the chosen blocks after construction. A strategy is one frozen record
in ``STRATEGIES``; a variant is a strategy combined with an attention implementation and is
named ``{strategy}-{attention}`` (``full-sdpa``), which is the test id fragment, the baseline
key and the label in reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    checkpoint_wrapper,
)

from models.transformer import ATTENTIONS, Transformer, check_attention

SUBLAYERS: tuple[str, ...] = ("attn", "mlp")


@dataclass(frozen=True)
class Strategy:
    """Which sublayers of which blocks run under ``torch.utils.checkpoint.checkpoint``.

    The checkpointed blocks are ``range(first_block, depth, block_step)``.
    """

    name: str
    sublayers: tuple[str, ...] = ()
    first_block: int = 1
    block_step: int = 1
    use_reentrant: bool = False
    #: Restore the RNG state before recomputing, so dropout draws the same masks.
    preserve_rng_state: bool = True

    def __post_init__(self) -> None:
        bad = [s for s in self.sublayers if s not in SUBLAYERS]
        if bad:
            raise ValueError(f"strategy {self.name!r}: unknown sublayers {bad}; valid: {SUBLAYERS}")

    def checkpointed_blocks(self, depth: int) -> range:
        """Indices of the blocks whose ``sublayers`` are checkpointed."""
        if not self.sublayers:
            return range(0)
        return range(self.first_block, depth, self.block_step)

    def is_checkpointed(self, block: int, sublayer: str, depth: int) -> bool:
        return sublayer in self.sublayers and block in self.checkpointed_blocks(depth)


def _strategies(*strategies: Strategy) -> dict[str, Strategy]:
    return {s.name: s for s in strategies}


#: Block 0 is never checkpointed: its input does not require grad, and there is nothing to
#: gain from recomputing the first block (its input is kept alive anyway).
STRATEGIES: dict[str, Strategy] = _strategies(
    Strategy("none"),
    Strategy("full", sublayers=("attn", "mlp")),
    Strategy("attn", sublayers=("attn",)),
    Strategy("mlp", sublayers=("mlp",)),
    Strategy("every_other", sublayers=("attn", "mlp"), block_step=2),
)


def get_strategy(name: str) -> Strategy:
    """Look up a strategy by name, or raise a ValueError listing the valid names."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown checkpointing strategy {name!r}; valid names: {', '.join(STRATEGIES)}"
        ) from None


def apply_ac(model: Transformer, strategy: Strategy | str) -> Transformer:
    """Wrap the strategy's sublayers in place with non-reentrant checkpointing; return the model.

    ``checkpoint_wrapper`` keeps state-dict keys unchanged, so a state dict of the model
    without checkpointing loads into a checkpointed one and vice versa.
    """
    if isinstance(strategy, str):
        strategy = get_strategy(strategy)
    impl = CheckpointImpl.REENTRANT if strategy.use_reentrant else CheckpointImpl.NO_REENTRANT
    depth = len(model.blocks)
    for i in strategy.checkpointed_blocks(depth):
        block = model.blocks[i]
        for sublayer in strategy.sublayers:
            module: nn.Module = getattr(block, sublayer)
            setattr(block, sublayer, checkpoint_wrapper(
                module, checkpoint_impl=impl, preserve_rng_state=strategy.preserve_rng_state))
    return model


def variant_id(strategy: str, attention: str) -> str:
    """``full`` + ``sdpa`` -> ``full-sdpa``."""
    return f"{get_strategy(strategy).name}-{check_attention(attention)}"


def parse_variant(variant: str) -> tuple[str, str]:
    """``full-sdpa`` -> (``full``, ``sdpa``); unknown parts raise with the valid names."""
    strategy, sep, attention = variant.rpartition("-")
    if not sep:
        raise ValueError(
            f"variant {variant!r} is not of the form STRATEGY-ATTENTION, e.g. 'full-sdpa'"
        )
    get_strategy(strategy)
    check_attention(attention)
    return strategy, attention


#: Every variant, strategies outer, attention inner: none-eager, none-sdpa, full-eager, ...
VARIANTS: tuple[str, ...] = tuple(
    variant_id(s, a) for s in STRATEGIES for a in ATTENTIONS
)
