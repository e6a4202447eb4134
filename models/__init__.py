"""What is measured: the reference transformer, its flavors and the checkpointing strategies."""

from models.strategies import (
    STRATEGIES,
    SUBLAYERS,
    VARIANTS,
    Strategy,
    apply_ac,
    get_strategy,
    parse_variant,
    variant_id,
)
from models.transformer import (
    ATTENTIONS,
    FLAVORS,
    Flavor,
    Transformer,
    build_model,
    check_attention,
    get_flavor,
    loss_fn,
    resolve_dtype,
)

__all__ = [
    "ATTENTIONS", "FLAVORS", "Flavor", "STRATEGIES", "SUBLAYERS", "Strategy", "Transformer",
    "VARIANTS", "apply_ac", "build_model", "check_attention", "get_flavor", "get_strategy",
    "loss_fn", "parse_variant", "resolve_dtype", "variant_id",
]
