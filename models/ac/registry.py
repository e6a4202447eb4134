"""The policy registry: one line per setting, parameterised names parsed both ways."""

from __future__ import annotations

import math
import re

from ac_bench.models.ac.base import Policy
from ac_bench.models.ac.compile_budget import CompileBudgetAC, budget_name
from ac_bench.models.ac.offload import OffloadAC
from ac_bench.models.ac.plan import PlanAC
from ac_bench.models.ac.region import RegionAC
from ac_bench.models.ac.selective import CORE_ATTENTION_OPS, SelectiveAC
from ac_bench.models.ac.sequential import SequentialAC
from ac_bench.models.transformer import ATTENTIONS, check_attention

#: Every policy kind, one class each.
KINDS: tuple[type[Policy], ...] = (RegionAC, SequentialAC, SelectiveAC, OffloadAC, PlanAC, CompileBudgetAC)

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

#: Parameterised families: name pattern -> builder. ``every_2`` is ``every_other``.
_FAMILIES = (
    (re.compile(r"every_(\d+)"), lambda n: POLICIES["every_other"] if n == 2 else
        RegionAC(f"every_{n}", sublayers=("attn", "mlp"), block_step=n), 2, "every_N needs N >= 2"),
    (re.compile(r"sequential_(\d+)"), lambda k: SequentialAC(f"sequential_{k}", segments=k), 1,
        "sequential_K needs K >= 1"),
)
_PLAN = re.compile(r"plan_a(\d+)_m(\d+)")
_BUDGET = re.compile(r"budget_(.*)")


def get_policy(name: str) -> Policy:
    """A policy by name (``full``, ``every_4``, ``sequential_3``), or a ValueError naming the valid ones."""
    if name in POLICIES:
        return POLICIES[name]
    m = _PLAN.fullmatch(name)
    if m:
        a, mlp = (int(g) for g in m.groups())
        if name != f"plan_a{a}_m{mlp}":
            raise ValueError(f"checkpointing policy {name!r}: write the block counts without leading zeros, "
                             f"plan_a{a}_m{mlp}")
        return PlanAC.of(a, mlp)
    m = _BUDGET.fullmatch(name)
    if m:
        try:
            budget = float(m.group(1))
        except ValueError:
            budget = math.nan
        if not (0.0 <= budget <= 1.0):
            raise ValueError(f"checkpointing policy {name!r}: budget_B needs a number B in [0, 1], e.g. budget_0.3")
        if name != budget_name(budget):
            raise ValueError(f"checkpointing policy {name!r}: write the budget as {budget_name(budget)}")
        return CompileBudgetAC(name, budget=budget)
    for pattern, build, least, rule in _FAMILIES:
        m = pattern.fullmatch(name)
        if m:
            n = int(m.group(1))
            if n < least or m.group(1) != str(n):
                raise ValueError(f"checkpointing policy {name!r}: {rule}")
            return build(n)
    raise ValueError(f"unknown checkpointing policy {name!r}; valid names: {', '.join(POLICIES)}, "
                     f"every_N (N >= 2), sequential_K (K >= 1), plan_aA_mM (a planner's plan), "
                     f"budget_B (torch.compile's activation memory budget, 0 <= B <= 1)")


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
