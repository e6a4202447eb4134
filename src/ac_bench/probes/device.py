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


def _cpuinfo_fields() -> dict[str, str]:
    """/proc/cpuinfo's fields (Linux), each with its first processor's value; {} elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() and value.strip():
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def processor_name(fields: dict[str, str] | None = None) -> str:
    """The CPU's model name: /proc/cpuinfo's ``model name`` (Linux), else ``platform.processor()``
    or, where that is empty, ``platform.machine()``. ``fields``: /proc/cpuinfo's, read if not given."""
    fields = _cpuinfo_fields() if fields is None else fields
    for key in ("model name", "Processor", "cpu model"):
        if fields.get(key):
            return fields[key]
    return platform.processor() or platform.machine() or "unknown"


#: /proc/cpuinfo's numbers that tell generations of one model name apart ("AMD EPYC" is a Zen 3
#: and a Zen 5 alike), as (field, name recorded, its form in the timing key): x86's family and
#: model (named as py-cpuinfo names them in pytest-benchmark's ``machine_info["cpu"]``), ARM's
#: implementer and part (in hex, as /proc/cpuinfo prints them).
GENERATION_FIELDS = {
    "x86": (("cpu family", "family", "f{}"), ("model", "model", "m{}")),
    "arm": (("CPU implementer", "implementer", "i{:#x}"), ("CPU part", "part", "p{:#x}")),
}


def processor_generation(fields: dict[str, str] | None = None) -> dict[str, int]:
    """This processor's generation: ``{"family": 25, "model": 17}`` on x86, ``{"implementer":
    65, "part": 3340}`` on ARM, ``{}`` where /proc/cpuinfo has neither (or is absent).
    ``fields``: /proc/cpuinfo's, read if not given."""
    fields = _cpuinfo_fields() if fields is None else fields
    for names in GENERATION_FIELDS.values():
        try:
            return {name: int(fields[field], 0) for field, name, _ in names}
        except (KeyError, ValueError):
            continue
    return {}


def generation_suffix(generation: dict | None) -> str:
    """A generation as the end of a timing key: ``f25-m17`` (x86 family 25, model 17),
    ``i0x41-p0xd0c`` (ARM implementer and part, in hex as /proc/cpuinfo prints them); ``""``
    for none."""
    for names in GENERATION_FIELDS.values():
        if generation and all(isinstance(generation.get(name), int) for _, name, _ in names):
            return "-".join(template.format(generation[name]) for _, name, template in names)
    return ""


def processor_key(name: str | None = None, generation: dict | None = None) -> str:
    """A processor as a folder name: its model name's words (trademark signs dropped), then its
    generation (``generation_suffix``): ``AMD EPYC`` of family 25, model 17 ->
    ``amd-epyc-f25-m17``; ``Intel(R) Xeon(R) Processor`` of family 6, model 167 ->
    ``intel-xeon-processor-f6-m167``; the name alone where no generation is known. Without a
    ``name``, this machine's processor and generation."""
    if name is None:
        fields = _cpuinfo_fields()
        name, generation = processor_name(fields), processor_generation(fields)
    name = re.sub(r"\((r|tm|c)\)", " ", name.lower())
    words = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"
    suffix = generation_suffix(generation)
    return f"{words}-{suffix}" if suffix else words


def timing_key(device: str | torch.device) -> str:
    """The key that separates timings: a GPU's device key, and on the CPU ``cpu-`` and the
    processor's model and generation (``processor_key``: a CPU's timings belong to its model as a
    GPU's to its GPU; the memory and FLOP figures do not, and stay under the device key ``cpu``)."""
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


def warm_library_workspaces(device: torch.device) -> None:
    """Make cuBLAS and cuBLASLt allocate their workspaces now, for this thread and for autograd's
    backward thread. They allocate them through the caching allocator at their first matmul on
    each (handle, stream) and keep them for the process: 65 to 66 MiB on the H200 (torch 2.11,
    ``scripts/cuda_resident.py``, output in ``docs/gpu/2026-11-30-h200-resident.txt``). Made
    inside the first variant measured in a process they counted in its ``resident_bytes`` (+65 MiB
    for ``none-eager``) and in no later variant's; made here, before ``foreign_bytes`` is read,
    they are foreign to every variant alike."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        w = torch.ones(16, 16, device=device, dtype=dtype, requires_grad=True)
        b = torch.ones(16, device=device, dtype=dtype, requires_grad=True)
        x = torch.ones(4, 16, device=device, dtype=dtype)
        # linear with a bias is addmm (cuBLASLt); the backward's mm runs on autograd's thread.
        (torch.nn.functional.linear(x, w, b) @ w).sum().backward()
    torch.cuda.synchronize(device)


class CudaAllocatorProbe:
    """The CUDA caching allocator's statistics, relative to what was allocated at creation.

    Creation collects garbage and empties the cache, so the figures belong to the variant
    alone; ``foreign_bytes`` records anything else still allocated (should be 0).
    """

    method = CUDA_ALLOCATOR

    def __init__(self, device: torch.device) -> None:
        self.device = device
        warm_library_workspaces(device)
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


#: The phases of a training step timed separately (``ac_bench.record.Training.step``'s marks):
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


# --- Processes and devices of a distributed run, and pytest-xdist workers -------------------

def distributed_backend(device_type: str) -> str:
    """The process-group backend for ``device_type``: NCCL on CUDA, gloo on the CPU."""
    return "nccl" if device_type == "cuda" else "gloo"


def rank_device(device_type: str, local_rank: int) -> torch.device:
    """The device one torchrun rank steps on: ``cuda:LOCAL_RANK`` (bound as the current device,
    before any CUDA work) or the CPU. The CUDA branch is not exercised on a CPU machine."""
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def xdist_worker_index(worker_id: str | None) -> int | None:
    """``gw3`` -> 3; None outside pytest-xdist (``PYTEST_XDIST_WORKER`` unset)."""
    if not worker_id:
        return None
    if not (worker_id.startswith("gw") and worker_id[2:].isdigit()):
        raise ValueError(f"PYTEST_XDIST_WORKER={worker_id!r} is not of the form gwN")
    return int(worker_id[2:])


def xdist_worker_gpu(worker_id: str | None, visible: list[str]) -> str | None:
    """The one GPU (an entry of ``visible``: CUDA_VISIBLE_DEVICES entries, or indices) that
    worker ``gwN`` binds: entry ``N mod len(visible)``. None outside xdist or with no GPU."""
    index = xdist_worker_index(worker_id)
    if index is None or not visible:
        return None
    return visible[index % len(visible)]


def bind_xdist_worker_gpu(environ: dict | None = None) -> str | None:
    """Under pytest-xdist on a machine with several GPUs, restrict this worker to its own GPU
    by setting ``CUDA_VISIBLE_DEVICES`` before CUDA initialises (``ac_bench.plugin`` calls it at import).

    The GPUs are those CUDA_VISIBLE_DEVICES already lists, or ``nvidia-smi -L`` counts; on a
    CPU machine there is none and nothing changes. Returns the GPU bound, or None. Only the
    worker-to-GPU mapping is tested on the CPU; binding real GPUs is not exercised here."""
    import os
    environ = os.environ if environ is None else environ
    worker = environ.get("PYTEST_XDIST_WORKER")
    if xdist_worker_index(worker) is None:
        return None
    gpu = xdist_worker_gpu(worker, visible_gpus(environ))
    if gpu is not None:
        if torch.cuda.is_initialized():
            raise RuntimeError(f"xdist worker {worker}: CUDA was initialised before its GPU could be bound")
        environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    import os
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def share_cores_among_xdist_workers(environ: dict | None = None, cores: int | None = None) -> int | None:
    """Under pytest-xdist, give this worker its share of the CPU cores: ``cores // workers``
    intra-op threads (at least 1), set in torch (``torch.set_num_threads``) and in
    ``OMP_NUM_THREADS``, so that what the worker launches (a ``pytest`` or ``torchrun`` child)
    inherits it (``ac_bench.plugin`` calls it at import). Returns the thread count, or None
    outside xdist or where the user set ``OMP_NUM_THREADS`` (their choice is kept).

    Why: each process's OpenMP pool defaults to one thread per core, so ``-n 2`` on 2 cores ran
    4 threads, and OpenMP's spinning workers made the fifty gradient checks of ``--slow`` take
    252 s instead of 9 s, and CI's first phase 16m55s instead of 10m33s (Intel Xeon VM, 2 cores,
    torch 2.13.0, 2026-12-02). Timed steps are not
    affected: they run with ``CPU_TIMING_THREADS`` (``probes.timing.timing_threads``), and memory,
    FLOPs and gradients do not depend on the thread count.
    ``cores``: default ``usable_cores()``."""
    import os
    environ = os.environ if environ is None else environ
    if xdist_worker_index(environ.get("PYTEST_XDIST_WORKER")) is None or environ.get("OMP_NUM_THREADS"):
        return None
    workers = environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not workers.isdigit() or int(workers) < 1:
        return None
    threads = max(1, (usable_cores() if cores is None else cores) // int(workers))
    environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return threads


def visible_gpus(environ: dict | None = None) -> list[str]:
    """The GPUs this process may use, without initialising CUDA: the entries of
    CUDA_VISIBLE_DEVICES where it is set, else one index per GPU that ``nvidia-smi -L`` lists."""
    import os
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    return [str(i) for i in range(_count_gpus_without_cuda())]


def _count_gpus_without_cuda() -> int:
    """GPUs on this machine, counted without initialising CUDA in this process (NVML via
    ``nvidia-smi -L``); 0 where there is no NVIDIA driver."""
    import shutil
    import subprocess
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))
