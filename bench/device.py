"""Every device-specific line of the suite: the device key, synchronisation, the allocator
probe and the out-of-memory error. Everything else is device-agnostic and runs in CI on the
CPU. Devices are reached through ``torch.cuda`` only here."""

from __future__ import annotations

import contextlib
import gc
import platform
import re
from collections.abc import Callable, Iterator
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


def processor_name() -> str:
    """The CPU's model name: /proc/cpuinfo's ``model name`` (Linux), else ``platform.processor()``
    or, where that is empty, ``platform.machine()``."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def processor_key(name: str | None = None) -> str:
    """A processor model as a folder name: ``AMD EPYC`` -> ``amd-epyc``, ``Intel(R) Xeon(R)
    Processor`` -> ``intel-xeon-processor`` (trademark signs dropped)."""
    name = processor_name() if name is None else name
    name = re.sub(r"\((r|tm|c)\)", " ", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"


def timing_key(device: str | torch.device) -> str:
    """The key that separates timings: a GPU's device key, and on the CPU ``cpu-`` and the
    processor model (a CPU's timings belong to its model as a GPU's to its GPU; the memory
    and FLOP figures do not, and stay under the device key ``cpu``)."""
    key = device_key(device)
    return f"cpu-{processor_key()}" if key == "cpu" else key


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


#: The phases of a training step timed separately (``bench.record.Training.step``'s marks):
#: forward with the loss, backward with any recomputation, the optimizer step.
PHASES: tuple[str, ...] = ("forward", "backward", "optimizer")


class PhaseClock:
    """Times the phases of each step: CUDA events recorded on the current stream (read after
    one synchronisation, so timing does not stall the queue), or ``host_timer`` on the CPU.
    Pass ``mark`` to ``Training.step``."""

    def __init__(self, device: str | torch.device, host_timer: Callable[[], float]) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.host_timer = host_timer
        self.steps: list[list] = []

    def mark(self, phase: str) -> None:
        if phase == "start":
            self.steps.append([])
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.steps[-1].append(event)
        else:
            self.steps[-1].append(self.host_timer())

    def seconds(self, last: int) -> dict[str, list[float]]:
        """Seconds of each phase in each of the last ``last`` complete steps."""
        steps = [s for s in self.steps if len(s) == len(PHASES) + 1][-last:]
        if self.cuda:
            torch.cuda.synchronize()
            spans = [[a.elapsed_time(b) / 1e3 for a, b in zip(s, s[1:])] for s in steps]
        else:
            spans = [[b - a for a, b in zip(s, s[1:])] for s in steps]
        return {phase: [span[i] for span in spans] for i, phase in enumerate(PHASES)}
