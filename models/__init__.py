"""What is measured: the model families (the notebook's transformer, a Llama-style stack, a
user's own), their flavors, and the checkpointing policies."""

import ac_bench.models.ac as ac
from ac_bench.models.ac import *  # noqa: F403  (the policies: ac.__all__, listed once there)
from ac_bench.models.families import (
    FAMILIES,
    Family,
    build_model,
    family_of,
    load_family_spec,
    load_family_specs,
    register_family,
    user_family_failure,
)
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


def apply_policy(model: Transformer, policy: ac.Policy | str) -> Transformer:
    """``get_policy(policy).apply(model)``: the policy applied in place; returns the model."""
    return (ac.get_policy(policy) if isinstance(policy, str) else policy).apply(model)


__all__ = [
    *ac.__all__,
    "ATTENTIONS",
    "FAMILIES",
    "FLAVORS",
    "Family",
    "Flavor",
    "Transformer",
    "apply_policy",
    "build_model",
    "check_attention",
    "family_of",
    "get_flavor",
    "load_family_spec",
    "load_family_specs",
    "user_family_failure",
    "loss_fn",
    "register_family",
    "resolve_dtype",
]
