"""torch.compile's own answer: the min-cut partitioner under an activation memory budget.

``torch._functorch.config.activation_memory_budget = B`` asks AOTAutograd's min-cut
rematerialization partitioner to keep at most a fraction B of what it would save at B = 1
(torchtitan's memory-budget mode sets the same knob): B = 1 saves everything worth saving,
B = 0 recomputes everything it can. The partition is decided when a graph is compiled, which
happens at the first call (and at any recompilation), so the budget is patched around every
forward of a step (``forward_context``): any compilation sees it, whatever call triggers it.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ac_bench.models.ac.base import Policy

#: ``backend="auto"``: inductor on CUDA; on the CPU the min-cut partitioner without code
#: generation (what the partitioner decides is the same; no C++ compiler needed).
CPU_BACKEND = "aot_eager_decomp_partition"
CUDA_BACKEND = "inductor"


def budget_name(budget: float) -> str:
    """``0.3`` -> ``budget_0.3``; ``1`` -> ``budget_1.0`` (Python's shortest float repr)."""
    return f"budget_{float(budget)!r}"


@dataclass(frozen=True)
class CompileBudgetAC(Policy):
    """The model compiled (``nn.Module.compile``, state-dict keys kept) with
    ``activation_memory_budget = budget``."""

    budget: float = 1.0
    backend: str = "auto"

    kind: ClassVar[str] = "compile_budget"
    fsdp2_incompatibility: ClassVar[str | None] = (
        "budget_B compiles the whole model (nn.Module.compile on the root), so Dynamo would trace "
        "FSDP2's pre/post-forward hooks and collectives of every block; torchtitan compiles each block "
        "after checkpointing and before fully_shard instead. Per-block compilation is not a policy of "
        "this suite, so budget_B is not measured under FSDP2")
    #: Compiled: measure_variant compiles with a plain step first, outside every counter.
    compiles: ClassVar[bool] = True

    name_grammar: ClassVar[str | None] = "budget_B (torch.compile's activation memory budget, 0 <= B <= 1)"

    @classmethod
    def from_name(cls, name: str) -> Policy | None:
        """``budget_B``: torch.compile with ``activation_memory_budget`` B."""
        m = re.fullmatch(r"budget_(.*)", name)
        if m is None:
            return None
        try:
            budget = float(m.group(1))
        except ValueError:
            budget = math.nan
        if not (0.0 <= budget <= 1.0):
            raise ValueError(f"checkpointing policy {name!r}: budget_B needs a number B in [0, 1], e.g. budget_0.3")
        if name != budget_name(budget):
            raise ValueError(f"checkpointing policy {name!r}: write the budget as {budget_name(budget)}")
        return cls(name, budget=budget)

    def __post_init__(self) -> None:
        if not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget) and 0.0 <= self.budget <= 1.0):
            raise ValueError(f"policy {self.name!r}: the activation memory budget must be a number in [0, 1], "
                             f"got {self.budget!r}")

    def backend_for(self, device: str | torch.device) -> str:
        if self.backend != "auto":
            return self.backend
        return CUDA_BACKEND if torch.device(device).type == "cuda" else CPU_BACKEND

    def record_params(self, device: str | torch.device) -> dict:
        return {**self.params(), "backend": self.backend_for(device)}

    def apply(self, model: nn.Module) -> nn.Module:
        """Compile in place. Dynamo's caches are reset first: its compiled code is cached per
        code object (``Module._call_impl``), so models compiled earlier in the process would
        otherwise count against the recompilation limit and fall back to eager silently."""
        torch._dynamo.reset()
        device = next(model.parameters()).device
        model.compile(backend=self.backend_for(device))
        return model

    def forward_context(self, device: str | torch.device) -> contextlib.AbstractContextManager:
        return torch._functorch.config.patch(activation_memory_budget=float(self.budget))
