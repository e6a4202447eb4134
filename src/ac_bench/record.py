"""The measurement record (versioned): one training step of one variant, measured once.

Data flows one way: a flavor and a variant go in, a model is built and stepped, a
``Measurement`` comes out; every test, baseline, JSON record and report reads that record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from ac_bench.metrics import METRICS
from ac_bench.models import Flavor, Policy, build_model, family_of, get_policy, loss_fn, parse_variant, resolve_dtype
from ac_bench.models.ac.offload import HostOffloadWrapper
from ac_bench.probes.attention import KernelRecorder
from ac_bench.probes.device import CUDA_ALLOCATOR, CudaAllocatorProbe, OutOfMemoryError, Phase, device_key, release_cached_memory
from ac_bench.probes.flops import BackwardOpCounter, flop_counter_mode, flops_by_op
from ac_bench.probes.memory import FAKE_MEMTRACKER, MEMTRACKER, MemTrackerProbe, SavedTensorCounter


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of every measured step: AdamW with the multi-tensor (foreach)
    implementation, what AdamW picks by default for CUDA tensors, chosen explicitly so that
    CPU, fake-tensor and CUDA figures agree."""
    return torch.optim.AdamW(model.parameters(), foreach=True)


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """``AdamW(amsgrad=False, betas=(0.9, 0.999), ..., foreach=True, ...)``: read from the
    optimizer object itself, so the record cannot claim settings the step did not use."""
    settings = ", ".join(f"{k}={v!r}" for k, v in sorted(optimizer.defaults.items())
                         if isinstance(v, (bool, int, float, str, tuple, type(None))))
    return f"{type(optimizer).__name__}({settings})"


@dataclass
class Training:
    """A variant ready to train: its model (seeded weights, policy applied), optimizer, input
    (the family's: ``Family.input_for``) and policy, in the flavor's dtype on ``device`` (fake
    tensors where a FakeTensorMode is active). The loss is ``loss_fn(model(x))``: the output's
    mean, which leaves a model's own scalar loss as it is (the transformers families')."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    policy: Policy
    device: torch.device

    def step(self, around_forward_backward: contextlib.AbstractContextManager | None = None,
             mark: Callable[[str], None] | None = None) -> None:
        """One whole training step: zero_grad, forward (inside the policy's context), loss,
        backward, optimizer step; ``around_forward_backward`` (a FlopCounterMode, say) is entered
        for forward and backward; ``mark`` (a ``ac_bench.probes.device.PhaseClock``'s) is called with
        ``start`` and then with each phase's name (``ac_bench.probes.device.PHASES``) as it ends."""
        mark = mark or _no_mark
        self.optimizer.zero_grad(set_to_none=True)
        with around_forward_backward or contextlib.nullcontext():
            mark("start")
            with self.policy.forward_context(self.device):
                loss = loss_fn(self.model(self.x))
            mark("forward")
            loss.backward()
            mark("backward")
        self.optimizer.step()
        mark("optimizer")


def _no_mark(phase: str) -> None:
    pass


def build_training(flavor: Flavor, variant: str, device: str | torch.device,
                   policy: Policy | None = None) -> Training:
    """The variant's model, optimizer and input (see ``Training``); ``policy``, if given,
    replaces the one the variant names (a policy object no registry name describes). A policy
    the flavor's family cannot run raises a ValueError with the family's reason."""
    policy_name, attention = parse_variant(variant)
    policy = policy or get_policy(policy_name)
    reason = family_of(flavor).exclusion(policy)
    if reason:
        raise ValueError(reason)
    device = torch.device(device)
    dtype = resolve_dtype(flavor, device)
    torch.manual_seed(0)
    model = policy.apply(build_model(flavor, attention, device, dtype))
    x = family_of(flavor).input_for(flavor, device, dtype)
    return Training(model, make_optimizer(model), x, policy, device)


def is_estimate(flavor: Flavor, device: str | torch.device) -> bool:
    """True where the flavor is estimated on fake tensors rather than run (``seed`` on CPU)."""
    return torch.device(device).type == "cpu" and flavor.cpu_mode == "estimate"


#: The record's layout version, stored with every record. Version 3 added
#: ``optimizer_step_peak_bytes``, the step's ``outcome``, the ``attention_kernel`` that ran, and
#: ``world_size``, ``rank``, ``global_batch`` and ``step_seconds`` (sharded runs,
#: ``ac_bench.distributed``); version 4 the ``family`` and the shape fields it adds
#: (``family_shape``), so that a record describes its model without the live registries;
#: version 5 ``backward_ops``, the aten ops dispatched in backward (the recompute FLOPs miss);
#: version 6 ``sharding``, how an estimated rank of a sharded run was set up (``ac_bench.scale``);
#: version 7 ``backward_nonmatmul_bytes``, the bytes the non-matmul ops of backward read and write
#: (the recompute FLOPs miss, by its size), and ``predicted_peak_bytes``, a per-block plan's step
#: peak as the planner predicted it (``ac_bench.milp``).
SCHEMA_VERSION = 7

_ADDED_IN_7: dict[str, object] = {"backward_nonmatmul_bytes": None, "predicted_peak_bytes": None}

#: Older versions a reader still accepts, and the value each field added since gets in such a
#: record (a metric absent from an old record is null, shown as not measured).
READABLE_VERSIONS: dict[int, dict[str, object]] = {
    2: {"optimizer_step_peak_bytes": None, "outcome": "ok", "outcome_note": None, "attention_kernel": None,
        "world_size": 1, "rank": 0, "step_seconds": None, "family": None, "family_shape": None,
        "backward_ops": None, "sharding": None, **_ADDED_IN_7},
    3: {"family": None, "family_shape": None, "backward_ops": None, "sharding": None, **_ADDED_IN_7},
    4: {"backward_ops": None, "sharding": None, **_ADDED_IN_7},
    5: {"sharding": None, **_ADDED_IN_7},
    6: _ADDED_IN_7,
}

#: What became of a variant's measured step. Only ``ok`` has figures; an out-of-memory step
#: (on CUDA) is recorded with null metrics and the error in ``outcome_note``, and the run goes
#: on; a non-finite loss keeps its figures but fails every test of the variant.
OK = "ok"
OUT_OF_MEMORY = "out-of-memory"
NON_FINITE_LOSS = "non-finite-loss"
OUTCOMES: tuple[str, ...] = (OK, OUT_OF_MEMORY, NON_FINITE_LOSS)


@dataclass(frozen=True)
class Measurement:
    """One variant's figures for one training step after one warm-up step.

    The metrics (``ac_bench.metrics.METRICS``) are fields of the same names; everything else says
    what was measured and how. Flat, so one record is one row of a table.
    """

    variant: str
    policy: str
    policy_kind: str
    policy_params: dict
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
    optimizer_step_peak_bytes: int
    activation_peak_bytes: int
    forward_kept_bytes: int
    saved_bytes: int | None
    #: Why ``saved_bytes`` is null, or None where it is valid.
    saved_bytes_note: str | None
    offloaded_bytes: int
    breakdown: dict[str, int] | None
    flops: int
    flops_by_op: dict[str, int]
    #: Aten ops dispatched during the warm-up step's backward, recomputation included (null in
    #: records older than schema version 5).
    backward_ops: int | None = None
    #: Bytes read and written by those ops of backward that are not matmuls
    #: (``ac_bench.probes.flops.BackwardOpCounter``; null in records older than schema version 7).
    backward_nonmatmul_bytes: int | None = None
    #: The step peak a planner predicted for this plan before it was measured (a per-block plan
    #: chosen by ``ac_bench.milp.BlockPlanner``); null for every other record, and in records older
    #: than schema version 7.
    predicted_peak_bytes: int | None = None
    #: ``ok``, ``out-of-memory`` or ``non-finite-loss`` (``OUTCOMES``); the note says what happened.
    outcome: str = OK
    outcome_note: str | None = None
    #: The attention kernel that ran, read from the ops dispatched (``ac_bench.probes.attention``):
    #: ``cpu_flash``, ``flash``, ``efficient``, ``cudnn``, or ``math`` (plain bmm and softmax:
    #: eager attention, or SDPA's math fallback); null in records older than schema version 3
    #: and where the step gave no figures.
    attention_kernel: str | None = None
    #: Processes in the run (1: a single-process step; W: FSDP2 over W ranks, ac_bench/distributed.py)
    #: and this record's rank; every figure above is this rank's.
    world_size: int = 1
    rank: int = 0
    #: ``batch * world_size``: the batch one optimizer step sees across all ranks.
    global_batch: int = 0
    #: Wall time of the measured step in seconds where the record took it (sharded runs, which
    #: pytest-benchmark does not time); None where pytest-benchmark times the variant.
    step_seconds: float | None = None
    #: The model family (``ac_bench.models.Family``) and the shape fields it adds to the ones
    #: above (``Family.shape_fields``: K/V heads, the MLP's hidden width, ...); null in records
    #: older than schema version 4.
    family: str | None = None
    family_shape: dict | None = None
    #: An estimated rank of a sharded run (``ac_bench.scale.ShardedSetup.as_dict``): the fake
    #: process group, FSDP2's mixed precision and ``reshard_after_forward``, each phase's peak and
    #: breakdown (``phases``), and, where the figures were extrapolated in the number of layers,
    #: the depths measured; null for every other record.
    sharding: dict | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.global_batch:
            object.__setattr__(self, "global_batch", self.batch * self.world_size)

    @property
    def case_id(self) -> str:
        """``small-full-sdpa``, ``tiny-w2-full-sdpa`` at world size 2: the baseline key (the
        device key names the file); one key for all ranks, whose figures are equal. The world
        size sits before the variant so that ``-k tiny-full-sdpa`` (the single-process accept
        command) does not also select the sharded tests."""
        world = f"-w{self.world_size}" if self.world_size > 1 else ""
        return f"{self.flavor}{world}-{self.variant}"

    @property
    def peak_how(self) -> str:
        """How the peak was obtained, as a sentence says it: ``measured`` (real tensors) or
        ``traced`` (fake tensors, ``memory_method`` ``fake-...``: exact bytes, no allocator)."""
        return "traced" if self.memory_method.startswith("fake") else "measured"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> "Measurement":
        """A record read back from JSON; a ValueError names what is missing or wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a measurement record must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        added: dict[str, object] = {}
        if version != SCHEMA_VERSION:
            if version not in READABLE_VERSIONS or isinstance(version, bool):
                raise ValueError(
                    f"measurement record of schema version {version!r}, this suite reads versions "
                    f"{', '.join(map(str, sorted([*READABLE_VERSIONS, SCHEMA_VERSION])))}; rerun the benchmark "
                    f"with this version of the suite")
            added = READABLE_VERSIONS[version]
            data = {**added, **data, "schema_version": SCHEMA_VERSION}
            if "global_batch" not in data and isinstance(data.get("batch"), int):
                data["global_batch"] = data["batch"] * data["world_size"]
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f"measurement record lacks {', '.join(missing)}")
        if data["outcome"] not in OUTCOMES:
            raise ValueError(f"measurement record field outcome is {data['outcome']!r}; valid: {', '.join(OUTCOMES)}")
        for name, metric in METRICS.items():
            value = data[name]
            if value is None and (metric.nullable or data["outcome"] == OUT_OF_MEMORY or name in added):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"measurement record field {name} must be a non-negative integer, got {value!r}")
        # The descriptive fields, by their declared plain type (readers sort and key on them).
        kinds = {"str": str, "int": int, "dict": dict}
        for f in dataclasses.fields(cls):
            if f.name in METRICS:
                continue
            kind = kinds.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
            value = data[f.name]
            if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise ValueError(f"measurement record field {f.name} must be of type {kind.__name__}, got {value!r}")
        if not (data["world_size"] >= 1 and 0 <= data["rank"] < data["world_size"]):
            raise ValueError(f"measurement record: rank {data['rank']} is not in 0..world_size-1 "
                             f"(world_size {data['world_size']})")
        if data["global_batch"] != data["batch"] * data["world_size"]:
            raise ValueError(f"measurement record: global_batch {data['global_batch']} is not batch x world_size "
                             f"({data['batch']} x {data['world_size']})")
        step = data["step_seconds"]
        if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or not step >= 0):
            raise ValueError(f"measurement record field step_seconds must be null or a non-negative number, got {step!r}")
        return cls(**{k: data[k] for k in names})


def reset_collector() -> None:
    """Collect garbage now, which also zeroes the collector's allocation counters.

    Reference cycles (module hooks of the trackers among them) can hold autograd nodes and
    with them tensors until the cyclic collector runs. When it runs is decided by counters of
    Python allocations; starting each measured phase from zero makes that point the same in
    every run, whatever the process measured before, while the step still runs with the
    collector on, as in training. Inside ``frozen_heap`` this scans only what was made since.
    """
    gc.collect()


@contextlib.contextmanager
def frozen_heap():
    """One full collection, then everything alive is frozen (``gc.freeze``) until the block
    ends: ``reset_collector`` inside it scans only the objects made since, and what the process
    made before (torch, pytest, other variants' records) can no longer decide when the collector
    runs. A full collection over a pytest session's heap took 0.13 s, three of them were 60%
    of a tiny variant's measurement; garbage made inside the block is still collected."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class StepFigures:
    """What ``measure_step`` saw: the record's figures that do not depend on how the model was
    built (one process or sharded), and the objects the caller describes them with.
    ``metrics``: one value per metric of the registry (``ac_bench.metrics.METRICS``), by name."""

    method: str
    foreign_bytes: int
    metrics: dict[str, int | None]
    saved_bytes_note: str | None
    breakdown: dict[str, int] | None
    flops_by_op: dict[str, int]
    attention_kernel: str
    outcome: str
    outcome_note: str | None
    #: Each phase's peak and breakdown at it (``zero_grad``, ``forward_backward``,
    #: ``optimizer_step``): not a record field; ``ac_bench.scale`` extrapolates each phase apart.
    phases: dict[str, dict] | None = None

    def fields(self) -> dict:
        """As ``Measurement`` keyword arguments (``method`` is ``memory_method``). A ValueError
        if the step did not give exactly the registry's metrics (a metric declared but not
        measured, or measured but not declared)."""
        if set(self.metrics) != set(METRICS):
            raise ValueError(f"measure_step gave the metrics {sorted(self.metrics)}, the registry declares "
                             f"{sorted(METRICS)}: measure each declared metric in _measured_step")
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("metrics", "phases")}
        data["memory_method"] = data.pop("method")
        return {**data, **self.metrics}


def measure_step(training: Training, probe_factory, saved_counter_factory=SavedTensorCounter,
                 after_warmup=None) -> StepFigures:
    """A warm-up step (compiled variants first take one plain step), then one step measured in
    three phases (zero_grad, forward+backward, optimizer step) by the probe that
    ``probe_factory(training)`` returns after the warm-up, unless ``training`` already came with
    an allocator probe (``probe_factory`` may return one made earlier). FLOPs, the ops of
    backward and the bytes of its non-matmul ops (``ac_bench.probes.flops.BackwardOpCounter``)
    are the warm-up's;
    ``after_warmup(training)`` runs between the two steps (gradients of the first step are there)."""
    if training.policy.compiles:
        training.step()  # compiles, outside every counter (see ac_bench.probes.memory.compile_aware_mem_tracker_class)
    # Warm-up step: gradients and optimizer state now exist. Its forward and backward
    # give the FLOP count and the ops of backward with their bytes (the same ops as every step);
    # FlopCounterMode's module hooks would otherwise hold memory during the measured step.
    counter = flop_counter_mode()
    with KernelRecorder() as kernels, BackwardOpCounter() as backward_ops:
        training.step(around_forward_backward=counter, mark=backward_ops.mark)
    if after_warmup is not None:
        after_warmup(training)
    probe = probe_factory(training)
    with frozen_heap():
        return _measured_step(training, probe, saved_counter_factory, counter, kernels, backward_ops)


def _saved_bytes(training: Training, saved_counter_factory) -> int:
    """Bytes saved for backward by one forward of its own, after the measured step, under the
    counter's ``saved_tensors_hooks`` (the policy's hooks inside them: only the innermost pair
    applies), its graph then dropped without a backward. Not in the measured forward: with any
    saved_tensors_hooks on, autograd hands back each saved tensor as a new tensor object, so a
    checkpointed function called as ``f(h, h, h)`` is recomputed with three distinct inputs, and
    one that branches on their identity (``nn.MultiheadAttention``'s ``query is key`` self-attention
    path, one packed projection instead of three) recomputes other ops and fails the checkpoint's
    metadata check (``CheckpointError``). The counter would have changed the step it measures."""
    saved = saved_counter_factory(training.model, training.x)
    with saved.count(), training.policy.forward_context(training.device):
        out = training.model(training.x)
    saved_bytes = saved.saved_bytes
    del saved, out
    reset_collector()
    return saved_bytes


def _measured_step(training: Training, probe, saved_counter_factory, counter, kernels,
                   backward_ops: BackwardOpCounter) -> StepFigures:
    """``measure_step``'s measured step, in three phases, each from a collected heap."""
    model, optimizer, x, policy, device = (training.model, training.optimizer, training.x, training.policy,
                                           training.device)
    phases: list[Phase] = []
    reset_collector()
    with probe.phase() as p:
        optimizer.zero_grad(set_to_none=True)
    phases.append(p)
    before_forward = probe.current()
    # Offloaded layers of a per-block plan (HostOffloadWrapper) count what they move: this step's.
    offloading = HostOffloadWrapper.within(model)
    reset_collector()
    with probe.phase() as p:
        with policy.forward_context(device) as hooks:
            out = model(x)
        offloaded = getattr(hooks, "offloaded_bytes", 0) + sum(m.offloaded_bytes for m in offloading)
        forward_kept = probe.current() - before_forward - out.untyped_storage().nbytes()
        loss = loss_fn(out)
        del out
        loss.backward()
        # After backward, whose peak is far above this one-element temporary.
        fake = isinstance(loss, torch._subclasses.fake_tensor.FakeTensor)
        loss_problem = None if fake or bool(torch.isfinite(loss).all()) else f"the loss is {loss.item()}"
        del loss
    phases.append(p)
    forward_backward = p
    reset_collector()
    with probe.phase() as p:
        optimizer.step()
    phases.append(p)
    optimizer_step = p
    saved_bytes = _saved_bytes(training, saved_counter_factory)

    peak = max(phases, key=lambda ph: ph.peak_bytes)
    note = policy.hidden_from_saved_tensors_hooks
    metrics = {
        "resident_bytes": phases[0].start_bytes,
        "peak_bytes": peak.peak_bytes,
        "optimizer_step_peak_bytes": optimizer_step.peak_bytes,
        "activation_peak_bytes": forward_backward.peak_bytes - before_forward,
        "forward_kept_bytes": forward_kept,
        "saved_bytes": None if note else saved_bytes,
        "offloaded_bytes": offloaded,
        "flops": int(counter.get_total_flops()),
        "backward_ops": backward_ops.ops,
        "backward_nonmatmul_bytes": backward_ops.nonmatmul_bytes,
        # Not the step's: the planner that chose a plan adds its prediction (ac_bench.milp).
        "predicted_peak_bytes": None,
    }
    return StepFigures(
        method=probe.method, foreign_bytes=probe.foreign_bytes, metrics=metrics,
        saved_bytes_note=note,
        breakdown=peak.breakdown,
        flops_by_op=flops_by_op(counter),
        attention_kernel=kernels.kernel,
        outcome=OK if loss_problem is None else NON_FINITE_LOSS,
        outcome_note=loss_problem and f"{loss_problem} in the measured step: the variant does not train",
        phases={name: {"peak_bytes": ph.peak_bytes, "breakdown": ph.breakdown}
                for name, ph in zip(("zero_grad", "forward_backward", "optimizer_step"), phases, strict=True)},
    )


def shape_fields(flavor: Flavor, variant: str, policy: Policy, device: torch.device, dtype: torch.dtype) -> dict:
    """The descriptive fields of a record: what was measured, at which shape, with which torch."""
    _, attention = parse_variant(variant)
    return dict(
        variant=variant, policy=policy.name, policy_kind=policy.kind, policy_params=policy.record_params(device),
        attention=attention, flavor=flavor.name,
        device=str(device), device_key=device_key(device), dtype=str(dtype).removeprefix("torch."),
        batch=flavor.batch, seq_len=flavor.seq_len, d_model=flavor.d_model,
        n_heads=flavor.n_heads, depth=flavor.depth, torch_version=str(torch.__version__),
        family=flavor.family, family_shape=family_of(flavor).shape_fields(flavor))


def measure_variant(flavor: Flavor, variant: str, device: str | torch.device,
                    policy: Policy | None = None) -> Measurement:
    """The variant's record (``_measure_step``); a step that runs out of device memory is a
    record too, with outcome ``out-of-memory``, null metrics and the error's first line, so that
    the run goes on with the other variants. ``policy``, if given, replaces the one the variant
    names (a policy object no registry name describes)."""
    try:
        return _measure_step(flavor, variant, device, policy)
    except OutOfMemoryError as exc:
        note = (str(exc).strip().splitlines() or ["out of memory"])[0]
    # Outside the except block: the failed step's tensors died with the exception's frames.
    release_cached_memory()
    return _descriptive_record(flavor, variant, device, policy, outcome=OUT_OF_MEMORY, outcome_note=note)


def _descriptive_record(flavor: Flavor, variant: str, device: str | torch.device, policy: Policy | None = None,
                        **fields) -> Measurement:
    """A record of a variant whose step gave no figures: what was to be measured, null metrics."""
    policy = policy or get_policy(parse_variant(variant)[0])
    device = torch.device(device)
    dtype = resolve_dtype(flavor, device)
    method = CUDA_ALLOCATOR if device.type == "cuda" else FAKE_MEMTRACKER if is_estimate(flavor, device) else MEMTRACKER
    return Measurement(
        **shape_fields(flavor, variant, policy, device, dtype),
        memory_method=method, optimizer=describe_optimizer(make_optimizer(nn.Linear(1, 1))), foreign_bytes=0,
        **{name: None for name in METRICS}, saved_bytes_note=None, breakdown=None, flops_by_op={}, **fields)


def _measure_step(flavor: Flavor, variant: str, device: str | torch.device,
                  policy: Policy | None = None) -> Measurement:
    """Build the variant alone on ``device``, take a warm-up step, then measure one step.

    Memory: resident before the step; the step's peak; the forward+backward peak above what
    was allocated just before the forward (``activation_peak_bytes``); what is still allocated
    after the forward, less the output (``forward_kept_bytes``); bytes saved for backward at
    the end of the forward. FLOPs: the warm-up step's forward+backward under FlopCounterMode.
    On the CPU a flavor with ``cpu_mode="estimate"`` runs on fake tensors: no compute, no
    real memory, exact bytes.
    """
    device = torch.device(device)
    fake = is_estimate(flavor, device)
    dtype = resolve_dtype(flavor, device)
    with FakeTensorMode() if fake else contextlib.nullcontext():
        # The allocator probe must exist before anything of this variant does.
        cuda_probe = CudaAllocatorProbe(device) if device.type == "cuda" else None
        training = build_training(flavor, variant, device, policy)
        figures = measure_step(training, lambda t: cuda_probe or MemTrackerProbe(
            device, t.model, t.optimizer, t.x, fake=fake))
    return Measurement(**shape_fields(flavor, variant, training.policy, device, dtype),
                       optimizer=describe_optimizer(training.optimizer), **figures.fields())
