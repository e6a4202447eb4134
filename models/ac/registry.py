"""The policy registry: one line per setting, parameterised names parsed both ways."""

from __future__ import annotations

from ac_bench.models.ac.base import Policy
from ac_bench.models.ac.blocks import BlockPlanAC
from ac_bench.models.ac.compile_budget import CompileBudgetAC
from ac_bench.models.ac.layer import LayerAC
from ac_bench.models.ac.native import NativeAC
from ac_bench.models.ac.offload import OffloadAC
from ac_bench.models.ac.plan import PlanAC
from ac_bench.models.ac.region import RegionAC
from ac_bench.models.ac.selective import CORE_ATTENTION_OPS, SelectiveAC
from ac_bench.models.ac.sequential import SequentialAC
from ac_bench.models.transformer import ATTENTIONS, check_attention

#: Every policy kind, one class each.
KINDS: tuple[type[Policy], ...] = (RegionAC, SequentialAC, SelectiveAC, OffloadAC, PlanAC, CompileBudgetAC, LayerAC,
                                   NativeAC, BlockPlanAC)

#: The policies every run measures, in the order tables list them.
POLICIES: dict[str, Policy] = {p.name: p for p in (
    RegionAC("none"),
    RegionAC("full", sublayers=("attn", "mlp")),
    RegionAC("attn", sublayers=("attn",)),
    RegionAC("mlp", sublayers=("mlp",)),
    RegionAC("every_other", sublayers=("attn", "mlp"), block_step=2),
    RegionAC("every_3", sublayers=("attn", "mlp"), block_step=3),
    SequentialAC("sequential"),
    SelectiveAC("sac", sublayers=("attn", "mlp")),
    SelectiveAC("core_attn", sublayers=("attn",), save_ops=CORE_ATTENTION_OPS),
    OffloadAC("offload"),
)}

#: The libraries' own checkpointing semantics, named apart from ours: ``whole_layers`` (every
#: layer whole, layer 0 included: transformers' ``gradient_checkpointing_enable()``, torchtitan's
#: ``FullAC``; ours, ``full``, wraps the sublayers of blocks 1…), ``whole_layers_offload`` (the
#: same, each layer's input in host memory: transformers' ``offload=True``) and ``native`` (the
#: model's own switch, measured as it is). Run on the families that list them (``Family.extra_policies``),
#: not in the default run; valid wherever a policy is named.
LIBRARY_POLICIES: dict[str, Policy] = {p.name: p for p in (
    LayerAC("whole_layers"),
    LayerAC("whole_layers_offload", offload=True),
    NativeAC("native"),
)}

def get_policy(name: str) -> Policy:
    """A policy by name: a registry key (``full``) or a parameterised name that one kind reads
    (``every_4``, ``sequential_3``, ``plan_a2_m1``, ``budget_0.3``: ``Policy.from_name``);
    otherwise a ValueError naming the valid ones."""
    if name in POLICIES or name in LIBRARY_POLICIES:
        return POLICIES.get(name) or LIBRARY_POLICIES[name]
    # Only the kinds that read names themselves: a subclass that inherits ``from_name`` (SelectiveAC
    # from RegionAC) does not name its parent's policies, as ``name_grammar`` below is its own too.
    for kind in (k for k in KINDS if "from_name" in vars(k)):
        policy = kind.from_name(name)
        if policy is not None:  # a registered setting is the registry's own object (every_2: every_other)
            return POLICIES[policy.name] if POLICIES.get(policy.name) == policy else policy
    grammar = ", ".join(k.name_grammar for k in KINDS if k.__dict__.get("name_grammar"))
    raise ValueError(f"unknown checkpointing policy {name!r}; valid names: {', '.join([*POLICIES, *LIBRARY_POLICIES])}, "
                     f"{grammar}")


def variant_id(policy: Policy | str, attention: str) -> str:
    """``full`` + ``sdpa`` -> ``full-sdpa``."""
    policy = get_policy(policy) if isinstance(policy, str) else policy
    return f"{policy.name}-{check_attention(attention)}"


def parse_variant(variant: str) -> tuple[str, str]:
    """``full-sdpa`` -> (``full``, ``sdpa``); unknown parts raise with the valid names."""
    policy, sep, attention = variant.rpartition("-")
    if not sep:
        raise ValueError(f"variant {variant!r} is not of the form POLICY-ATTENTION, e.g. 'full-sdpa'")
    get_policy(policy)
    check_attention(attention)
    return policy, attention


#: Every default variant, policies outer, attention inner: none-eager, none-sdpa, full-eager, ...
VARIANTS: tuple[str, ...] = tuple(variant_id(p, a) for p in POLICIES for a in ATTENTIONS)
