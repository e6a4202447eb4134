"""Activation-checkpointing policies as data, applied to an unmodified model.

As in torchtitan's policy classes (``FullAC``, ``SelectiveAC``, ``MemoryBudgetAC``): one frozen
dataclass per *kind* of policy, its settings as fields, ``apply(model)`` and, where a kind
needs one, a context around the forward (``forward_context``). The model class never changes
and state-dict keys are kept, so one state dict loads into every variant.

A policy is named by its registry key (``full``, ``every_3``, ``sequential_4``); a variant is
a policy with an attention implementation, ``{policy}-{attention}`` (``sac-sdpa``): the test
id fragment, the baseline key and the label in the report. ``get_policy`` parses any valid
name, parameterised ones included, and ``policy.name`` gives it back.
"""

from ac_bench.models.ac.base import SUBLAYERS, Policy
from ac_bench.models.ac.blocks import BLOCK_CHOICES, BlockPlanAC
from ac_bench.models.ac.compile_budget import CompileBudgetAC, budget_name
from ac_bench.models.ac.layer import LayerAC
from ac_bench.models.ac.native import NativeAC
from ac_bench.models.ac.offload import OffloadAC
from ac_bench.models.ac.plan import PlanAC
from ac_bench.models.ac.region import RegionAC
from ac_bench.models.ac.registry import (
    KINDS,
    LIBRARY_POLICIES,
    POLICIES,
    VARIANTS,
    get_policy,
    parse_variant,
    variant_id,
)
from ac_bench.models.ac.selective import CORE_ATTENTION_OPS, SAC_SAVE_OPS, SelectiveAC
from ac_bench.models.ac.sequential import SequentialAC

__all__ = [
    "BLOCK_CHOICES", "BlockPlanAC", "CORE_ATTENTION_OPS", "CompileBudgetAC", "KINDS", "LIBRARY_POLICIES", "LayerAC", "NativeAC",
    "OffloadAC", "PlanAC", "POLICIES", "Policy", "RegionAC", "SAC_SAVE_OPS", "SUBLAYERS",
    "SelectiveAC", "SequentialAC", "VARIANTS", "budget_name", "get_policy", "parse_variant", "variant_id",
]
