"""What is measured: the model families (the notebook's transformer, a Llama-style stack, a
user's own), their flavors, and the checkpointing policies."""

from ac_bench.models.ac import (
    KINDS,
    POLICIES,
    SUBLAYERS,
    VARIANTS,
    CompileBudgetAC,
    OffloadAC,
    PlanAC,
    Policy,
    RegionAC,
    SelectiveAC,
    SequentialAC,
    budget_name,
    get_policy,
    parse_variant,
    variant_id,
)
from ac_bench.models.families import FAMILIES, Family, build_model, family_of, load_family_spec, register_family
from ac_bench.models.transformer import (
    ATTENTIONS,
    FLAVORS,
    Flavor,
    Transformer,
    check_attention,
    get_flavor,
    loss_fn,
    resolve_dtype,
)


def apply_policy(model: Transformer, policy: Policy | str) -> Transformer:
    """``get_policy(policy).apply(model)``: the policy applied in place; returns the model."""
    return (get_policy(policy) if isinstance(policy, str) else policy).apply(model)


__all__ = [
    "ATTENTIONS",
    "CompileBudgetAC",
    "FAMILIES",
    "FLAVORS",
    "KINDS",
    "Family",
    "Flavor",
    "OffloadAC",
    "POLICIES",
    "PlanAC",
    "Policy",
    "RegionAC",
    "SUBLAYERS",
    "SelectiveAC",
    "SequentialAC",
    "Transformer",
    "VARIANTS",
    "apply_policy",
    "budget_name",
    "build_model",
    "check_attention",
    "family_of",
    "get_flavor",
    "get_policy",
    "load_family_spec",
    "loss_fn",
    "parse_variant",
    "register_family",
    "resolve_dtype",
    "variant_id",
]
