"""Which attention kernel really ran, and forcing one.

SDPA picks its kernel at run time (FlashAttention, memory-efficient, cuDNN, or the math
fallback of plain bmm and softmax) and falls back silently; their memory differs a lot. The
kernel is read from the aten ops dispatched during a step (``KernelRecorder``) and recorded as
the record's ``attention_kernel``. ``--sdpa-backend`` forces one through
``torch.nn.attention.sdpa_kernel``; ``check_backend`` says in one line when it cannot run.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

#: The ``--sdpa-backend`` choices, in the ecosystem's names.
SDPA_BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}

#: Fused forward ops -> the kernel's name as recorded (``cpu_flash``: the CPU FlashAttention kernel).
FUSED_KERNELS: dict[str, str] = {
    "_scaled_dot_product_flash_attention_for_cpu": "cpu_flash",
    "_scaled_dot_product_flash_attention": "flash",
    "_flash_attention_forward": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_efficient_attention_forward": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}

#: No fused kernel ran: attention was plain bmm and softmax (eager attention, or SDPA's math fallback).
MATH = "math"


class KernelRecorder(TorchDispatchMode):
    """Records the fused attention ops dispatched inside it (nests with FlopCounterMode and
    FakeTensorMode: it only looks at op names and passes every call through)."""

    def __init__(self) -> None:
        super().__init__()
        self.fused: set[str] = set()

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """Let a compiled model (``budget_B``) run compiled inside: without this Dynamo runs it
        eagerly while any dispatch mode is active (see ``ac_bench.probes.memory.compile_aware_mem_tracker_class``);
        the compiled graph's ops still pass through here."""
        return True

    #: Higher-order operators pass through too (the checkpoint's ``run_and_save_rng_state`` in a
    #: compiled block, pytorch #120381's shape): without this torch raises NotImplementedError
    #: ("no rule registered for HigherOrderOperator") and the probe would break the step it watches.
    supports_higher_order_operators = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = getattr(getattr(func, "_overloadpacket", None), "__name__", None)
        if name in FUSED_KERNELS:
            self.fused.add(FUSED_KERNELS[name])
        return func(*args, **(kwargs or {}))

    @property
    def kernel(self) -> str:
        """``cpu_flash``, ``flash``, ``efficient``, ``cudnn`` (joined by ``+`` if a step used
        several), or ``math`` where no fused kernel ran."""
        return "+".join(sorted(self.fused)) or MATH


def forced_backend(name: str | None) -> contextlib.AbstractContextManager:
    """``sdpa_kernel`` restricted to the named backend, or nothing where none is forced."""
    if name is None:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPA_BACKENDS[name]])


def check_backend(name: str, device: str | torch.device, dtype: torch.dtype, n_heads: int, head_dim: int,
                  seq_len: int = 64) -> None:
    """Run one small SDPA forward and backward with the forced backend, shaped like the flavor
    (heads, head dimension, dtype) on ``device``; a ValueError in one line if it cannot run."""
    q = torch.randn(1, n_heads, seq_len, head_dim, device=device, dtype=dtype, requires_grad=True)
    try:
        with forced_backend(name), KernelRecorder() as recorder:
            torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--sdpa-backend {name}: the {name} kernel cannot run on {torch.device(device).type} for "
                         f"{str(dtype).removeprefix('torch.')}, {n_heads} heads of dimension {head_dim}: {reason}") from None
    if name != MATH and recorder.kernel == MATH:  # cannot happen with sdpa_kernel today; say so if it does
        raise ValueError(f"--sdpa-backend {name}: SDPA fell back to the math kernel on {torch.device(device).type}")

