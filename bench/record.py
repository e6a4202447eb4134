"""The measurement record: one training step of one variant, measured once.

Data flows one way: a flavor and a variant go in, a model is built and stepped, a
``Measurement`` comes out; every test, baseline, JSON record and report reads that record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from bench.flops import flop_counter_mode, flops_by_op
from bench.memory import CudaAllocatorProbe, MemTrackerProbe, Phase, SavedTensorCounter
from models import Flavor, apply_ac, build_model, loss_fn, parse_variant, resolve_dtype

#: AdamW with the multi-tensor (foreach) implementation: what AdamW picks by default for
#: CUDA tensors, chosen explicitly so that CPU, fake-tensor and CUDA figures agree.
OPTIMIZER = "AdamW(foreach=True)"


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of every measured step (see ``OPTIMIZER``)."""
    return torch.optim.AdamW(model.parameters(), foreach=True)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               around_forward_backward: contextlib.AbstractContextManager | None = None) -> None:
    """One whole training step: zero_grad, forward, loss, backward, optimizer step;
    ``around_forward_backward`` (a FlopCounterMode, say) is entered for forward and backward."""
    optimizer.zero_grad(set_to_none=True)
    with around_forward_backward or contextlib.nullcontext():
        loss_fn(model(x)).backward()
    optimizer.step()


def build_training(flavor: Flavor, variant: str, device: str | torch.device
                   ) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor]:
    """The variant's model (seeded weights, checkpointing applied), its optimizer and an input,
    in the flavor's dtype on ``device`` (fake tensors where a FakeTensorMode is active)."""
    strategy, attention = parse_variant(variant)
    dtype = resolve_dtype(flavor, device)
    torch.manual_seed(0)
    model = apply_ac(build_model(flavor, attention, device, dtype), strategy)
    x = torch.randn(flavor.input_shape(), device=device, dtype=dtype)
    return model, make_optimizer(model), x


def is_estimate(flavor: Flavor, device: str | torch.device) -> bool:
    """True where the flavor is estimated on fake tensors rather than run (``seed`` on CPU)."""
    return torch.device(device).type == "cpu" and flavor.cpu_mode == "estimate"


def device_key(device: str | torch.device) -> str:
    """The key that separates baselines: ``cpu``, or the GPU's name (``nvidia-h200``)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return device.type


@dataclass(frozen=True)
class Measurement:
    """One variant's figures for one training step after one warm-up step."""

    variant: str
    strategy: str
    attention: str
    flavor: str
    device: str
    device_key: str
    dtype: str
    batch: int
    seq_len: int
    d_model: int
    n_heads: int
    depth: int
    torch_version: str
    memory_method: str
    optimizer: str
    #: Bytes allocated on the device by anything else when this variant was measured (0 with
    #: MemTracker, which only sees this variant's tensors); every figure excludes them.
    foreign_bytes: int
    resident_bytes: int
    peak_bytes: int
    activation_peak_bytes: int
    saved_bytes: int
    breakdown: dict[str, int] | None
    flops: int
    flops_by_op: dict[str, int]

    @property
    def case_id(self) -> str:
        """``small-full-sdpa``: the baseline key (the device key names the file)."""
        return f"{self.flavor}-{self.variant}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def reset_collector() -> None:
    """Collect garbage now, which also zeroes the collector's allocation counters.

    Reference cycles (module hooks of the trackers among them) can hold autograd nodes and
    with them tensors until the cyclic collector runs. When it runs is decided by counters of
    Python allocations; starting each measured phase from zero makes that point the same in
    every run, whatever the process measured before, while the step still runs with the
    collector on, as in training.
    """
    gc.collect()


def measure_variant(flavor: Flavor, variant: str, device: str | torch.device) -> Measurement:
    """Build the variant alone on ``device``, take a warm-up step, then measure one step.

    Memory: resident before the step; the step's peak; the forward+backward peak above what
    was allocated just before the forward (``activation_peak_bytes``); bytes saved for
    backward at the end of the forward. FLOPs: the warm-up step's forward+backward under
    FlopCounterMode.
    On the CPU a flavor with ``cpu_mode="estimate"`` runs on fake tensors: no compute, no
    real memory, exact bytes.
    """
    strategy, attention = parse_variant(variant)
    device = torch.device(device)
    fake = is_estimate(flavor, device)
    dtype = resolve_dtype(flavor, device)
    probe: CudaAllocatorProbe | MemTrackerProbe | None = None
    with FakeTensorMode() if fake else contextlib.nullcontext():
        if device.type == "cuda":
            probe = CudaAllocatorProbe(device)  # before anything of this variant exists
        model, optimizer, x = build_training(flavor, variant, device)
        # Warm-up step: gradients and optimizer state now exist. Its forward and backward
        # give the FLOP count (the same ops as every step); FlopCounterMode's module hooks
        # would otherwise hold memory during the measured step.
        counter = flop_counter_mode()
        train_step(model, optimizer, x, around_forward_backward=counter)
        if probe is None:
            probe = MemTrackerProbe(device, model, optimizer, x, fake=fake)

        phases: list[Phase] = []
        reset_collector()
        with probe.phase() as p:
            optimizer.zero_grad(set_to_none=True)
        phases.append(p)
        before_forward = probe.current()
        saved = SavedTensorCounter(model, x)
        reset_collector()
        with probe.phase() as p:
            with saved.count():
                loss = loss_fn(model(x))
            loss.backward()
            del loss
        phases.append(p)
        forward_backward = p
        reset_collector()
        with probe.phase() as p:
            optimizer.step()
        phases.append(p)

    peak = max(phases, key=lambda ph: ph.peak_bytes)
    return Measurement(
        variant=variant, strategy=strategy, attention=attention, flavor=flavor.name,
        device=str(device), device_key=device_key(device), dtype=str(dtype).removeprefix("torch."),
        batch=flavor.batch, seq_len=flavor.seq_len, d_model=flavor.d_model,
        n_heads=flavor.n_heads, depth=flavor.depth, torch_version=str(torch.__version__),
        memory_method=probe.method, optimizer=OPTIMIZER, foreign_bytes=probe.foreign_bytes,
        resident_bytes=phases[0].start_bytes,
        peak_bytes=peak.peak_bytes,
        activation_peak_bytes=forward_backward.peak_bytes - before_forward,
        saved_bytes=saved.saved_bytes,
        breakdown=peak.breakdown,
        flops=int(counter.get_total_flops()),
        flops_by_op=flops_by_op(counter),
    )
