"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode has no formula for the CPU flash-attention kernel that ``sdpa`` runs on the
CPU, so without the registration below an ``sdpa`` variant's attention FLOPs would silently
count as zero. The formulas are PyTorch's own for the other SDPA kernels.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

aten = torch.ops.aten

_CPU_FLASH_FWD = aten._scaled_dot_product_flash_attention_for_cpu
_CPU_FLASH_BWD = aten._scaled_dot_product_flash_attention_for_cpu_backward


def _cpu_flash_forward_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """(query, key, value, ...) -> output, logsumexp: QK^T and PV."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                             out_shape=None, **kwargs) -> int:
    """(grad_out, query, key, value, out, logsumexp, ...): recompute scores plus four bmms."""
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register_missing_formulas() -> None:
    """Register the CPU flash SDPA formulas unless this PyTorch already counts them."""
    if _CPU_FLASH_FWD not in flop_counter.flop_registry:
        register_flop_formula(_CPU_FLASH_FWD)(_cpu_flash_forward_flop)
    if _CPU_FLASH_BWD not in flop_counter.flop_registry:
        register_flop_formula(_CPU_FLASH_BWD)(_cpu_flash_backward_flop)


register_missing_formulas()


def flop_counter_mode() -> FlopCounterMode:
    """A silent FlopCounterMode with the suite's formulas registered."""
    return FlopCounterMode(display=False)


def flops_by_op(counter: FlopCounterMode) -> dict[str, int]:
    """Global FLOPs per aten op name, sorted by name."""
    return {str(op): int(n) for op, n in sorted(counter.get_flop_counts()["Global"].items(), key=lambda kv: str(kv[0]))}
