"""Every device-specific line of the suite: the device key, synchronisation, the allocator
probe and the out-of-memory error. Everything else is device-agnostic and runs in CI on the
CPU. Devices are reached through ``torch.cuda`` only here."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

#: The memory method of the allocator probe, recorded as ``memory_method``.
CUDA_ALLOCATOR = "cuda-allocator"

#: Raised by a step that does not fit the device (a result in a sweep, not a crash).
OutOfMemoryError = torch.cuda.OutOfMemoryError


def cuda_available() -> bool:
    return torch.cuda.is_available()


def device_key(device: str | torch.device) -> str:
    """The key that separates baselines: ``cpu``, or the GPU's name (``nvidia-h200``)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return device.type


def device_name(device: str | torch.device) -> str:
    """The GPU's marketing name, or ``cpu``."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def release_cached_memory() -> None:
    """After an out-of-memory step: collect its garbage and hand the allocator's cached blocks
    back, so the next variant starts clean (a no-op where CUDA was never used)."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def synchronize() -> None:
    """Wait for every queued kernel (a no-op where CUDA was never used)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def cuda_backward_allowance(score_bytes: int, attention: str) -> int:
    """Bytes the CUDA backward allocates beyond the CPU fake-tensor estimate of the activation
    peak, which cannot see allocations inside kernels. Measured on the H200 (torch 2.11, every
    seed variant, two runs with identical figures): eager +128.2 to +133.1 MiB, because CUDA's
    ``aten._softmax_backward_data`` allocates a transient the size of the heads x seq x seq
    matrix (``score_bytes``) beside its output, at the backward's peak; sdpa (cuDNN attention)
    +34.2 to +39.4 MiB, the peak then sitting in a bias-gradient ``aten.sum`` with a 64 MiB
    transient of its own. The allowance is absolute: relative to the peak it was +5% for
    none-eager and +19% for full-eager, the same buffer."""
    if attention == "eager":
        return score_bytes + 8 * 2 ** 20
    return 48 * 2 ** 20


@dataclass
class Phase:
    """What a probe saw during one phase: bytes at its start, its peak, and the breakdown by
    category at the peak (None where the method gives none)."""

    start_bytes: int = 0
    peak_bytes: int = 0
    breakdown: dict[str, int] | None = field(default=None)


class CudaAllocatorProbe:
    """The CUDA caching allocator's statistics, relative to what was allocated at creation.

    Creation collects garbage and empties the cache, so the figures belong to the variant
    alone; ``foreign_bytes`` records anything else still allocated (should be 0).
    """

    method = CUDA_ALLOCATOR

    def __init__(self, device: torch.device) -> None:
        self.device = device
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        self.foreign_bytes = torch.cuda.memory_allocated(device)

    def current(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device) - self.foreign_bytes

    @contextlib.contextmanager
    def phase(self) -> Iterator[Phase]:
        result = Phase(start_bytes=self.current())
        torch.cuda.reset_peak_memory_stats(self.device)
        yield result
        torch.cuda.synchronize(self.device)
        result.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.foreign_bytes
