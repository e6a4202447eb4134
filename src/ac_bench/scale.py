"""Per-rank memory of FSDP2 training at any world size, estimated in one process on the CPU.

One process stands in for rank 0 of a world of ``world_size`` ranks: PyTorch's fake process
group (``torch.testing._internal.distributed.fake_pg``, backend ``fake``: every collective is a
no-op that returns at once) and fake tensors (``FakeTensorMode``: shapes, dtypes and storage
sizes, no data, no compute). On it the step is the sharded run's (``ac_bench.distributed``): the
model built as a single process builds it, its checkpointing policy applied, ``fully_shard`` on
each decoder layer and then on the root with the setup's ``MixedPrecisionPolicy`` and
``reshard_after_forward``, AdamW over the sharded parameters, a warm-up step, then one step
measured by ``FSDPMemTracker`` (``ac_bench.probes.memory.FSDPMemTrackerProbe``; memory method
``fake-fsdp-memtracker``). Every figure is rank 0's; FSDP2 pads each parameter's shard to
``ceil(rows / world_size)`` rows on every rank, so every rank holds the same bytes.

Against a real launch (gloo on the CPU, ``torchrun -m ac_bench.distributed``) at world sizes 2
and 4 every figure is equal except the three peaks, which a real rank may exceed by FSDP's
transient buffers of one block (``ac_bench.analytic.fsdp_unsharded_peak_bytes``: an all-gather
output that gloo's thread frees a little later than the fake group, which frees it at once);
the benchmark asserts both (docs/scale.md).

Deep models are not traced layer by layer: ``estimate`` measures three depths ``d, d + p,
d + 2p`` (``p`` the policy's period in layers: 2 for ``every_other``), checks that every
figure (bytes, FLOPs, ops, each phase's peak and breakdown, each op's FLOPs) is affine in the
number of layers there, exactly, and extrapolates to the model's depth; the step's peak is then
the largest extrapolated phase peak (which phase peaks can change with depth). The record says
so (``sharding["extrapolated_from_depths"]``). A figure that is not affine raises NotAffine
instead of a guess.

``SCALE_MODELS``: Llama 3 8B, 70B and 405B and Qwen3 8B and 14B from their published
configurations (Meta's ``params.json``, Qwen's ``config.json``; torchtitan's ``llama3_configs``
and ``qwen3_configs``) as transformers' ``LlamaForCausalLM`` and ``Qwen3ForCausalLM``
(``ac_bench.models.hf.LLAMA3``, ``QWEN3_PUBLISHED``): token ids in, embedding, layers, final
norm, output head and the cross-entropy over the vocabulary measured. They need transformers (the ``hf`` extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist

from ac_bench.distributed import build_sharded_training, check_composes
from ac_bench.metrics import METRICS
from ac_bench.models import Flavor, Policy, get_policy, parse_variant, resolve_dtype
from ac_bench.models.ac.offload import simulated_host
from ac_bench.models.families import family_of
from ac_bench.outputs import byte_unit, bytes_text, flop_unit, flops_text, gib_at_least, gib_text
from ac_bench.probes.memory import FSDPMemTrackerProbe, ShardedSavedTensorCounter
from ac_bench.record import Measurement, describe_optimizer, measure_step, shape_fields

#: The memory method of an estimated rank (``Measurement.memory_method``).
FAKE_FSDP_MEMTRACKER = "fake-fsdp-memtracker"

#: Depths up to this are traced whole; deeper models are extrapolated (``estimate``).
MAX_TRACED_DEPTH = 6

#: How often ``estimate`` moves its three depths one period deeper when they are not affine: the
#: shallowest can be another regime (Llama-3-405B over 8 ranks without checkpointing peaks at
#: another point of the backward with 2 layers than with 3 or more; 3, 4, 5 are affine).
MAX_SHIFTS = 3

#: What a record of an estimated rank adds (``Measurement.sharding``): the process group.
PROCESS_GROUP = "fake"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ScaleError(ValueError):
    """An estimate that cannot be made as asked; the message names the problem and the fix."""


#: The oldest torch whose estimate equals the real sharded launch. Under 2.11.0+cu130 (run on
#: the CPU, 2026-12-02) the gloo launches still agreed with the committed figures, but the fake
#: process group's estimate put 686,160 B of optimizer state at the peak of ``tiny`` over 2 ranks
#: where the launch holds 152,592 B (AdamW's state; the difference is seven shards' worth of the
#: parameters), failing the estimate-equals-launch check at every policy; under 2.12.1 those
#: checks pass at world sizes 2 and 4 (docs/results.md, "Other torch versions").
ESTIMATE_OLDEST_TORCH = (2, 12)


def estimate_torch_problem(version: str | None = None) -> str | None:
    """The one line refusing an estimate under a torch older than ``ESTIMATE_OLDEST_TORCH``
    (``version``: default ``torch.__version__``), or None."""
    from torch.torch_version import TorchVersion
    version = str(torch.__version__ if version is None else version)
    try:
        if TorchVersion(version) >= ESTIMATE_OLDEST_TORCH:
            return None
    except (TypeError, ValueError):
        return None  # a build whose version does not parse: not refused on a guess
    oldest = ".".join(map(str, ESTIMATE_OLDEST_TORCH))
    return (f"torch {version}: before torch {oldest} the fake-process-group estimate overstates the optimizer step's "
            f"memory (it does not equal the real sharded launch); install torch>={oldest}, or measure a real launch "
            f"(pytest bench/ -m distributed)")


class NotAffine(ScaleError):
    """A figure that is not affine in the number of layers at the depths measured."""


def _dtype_name(name: str | None, option: str) -> str | None:
    if name is not None and name not in _DTYPES:
        raise ScaleError(f"{option} {name!r} is not a dtype this estimate knows; choose {', '.join(_DTYPES)}")
    return name


#: The most ranks an estimate takes. Each collective is traced over every rank (FSDP2 pads a
#: parameter to a multiple of W rows), so time grows with W: one policy at 2 layers of Llama 3
#: 8B's width, sequence 1024, took 1.0 s at W = 8, 5.9 s at 4096 and 28.8 s at 16384 (2 cores,
#: 2026-11-30); 10^8 ran out of memory. Llama 3 405B trained with 16,384 GPUs, 128-way data
#: parallel.
MAX_WORLD_SIZE = 16384


def world_size_problem(world_size: int) -> str | None:
    """Why the estimate does not take ``world_size`` (above ``MAX_WORLD_SIZE``), or None."""
    if world_size <= MAX_WORLD_SIZE:
        return None
    return (f"world size {world_size}: the estimate takes at most {MAX_WORLD_SIZE} ranks (it traces every "
            f"collective over all of them; its time grows with the world size)")


@dataclasses.dataclass(frozen=True)
class ShardedSetup:
    """How the sharded run is set up (every field goes into the record's ``sharding``).

    ``world_size``: ranks (1 or more); the per-rank batch and the sequence length are the
    flavor's. ``mp_param_dtype`` / ``mp_reduce_dtype``: FSDP2's ``MixedPrecisionPolicy``
    ``param_dtype`` (the dtype the unsharded parameters and the compute use) and
    ``reduce_dtype`` (gradient reduce-scatter); None for both: no mixed precision (the model's
    own dtype throughout). The default is torchtitan's (``mixed_precision_param`` bfloat16,
    ``mixed_precision_reduce`` float32) over float32 parameters. ``reshard_after_forward``
    True: FSDP2's default, as the launch (``ac_bench.distributed``) and torchtitan's root call
    leave it (``fully_shard`` without the argument: each block resharded after its forward, the
    root not, since backward all-gathers it at once; on a transformers model the root holds the
    embedding, the final norm and the output head); False: no unit resharded after its forward.
    A ScaleError names a bad value.
    """

    world_size: int
    mp_param_dtype: str | None = "bfloat16"
    mp_reduce_dtype: str | None = "float32"
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.world_size, int) or isinstance(self.world_size, bool) or self.world_size < 1:
            raise ScaleError(f"world size {self.world_size!r}: give a whole number of ranks, 1 or more")
        if self.world_size > MAX_WORLD_SIZE:
            raise ScaleError(world_size_problem(self.world_size))
        _dtype_name(self.mp_param_dtype, "mixed-precision param dtype")
        _dtype_name(self.mp_reduce_dtype, "mixed-precision reduce dtype")

    def fsdp_kwargs(self, mesh) -> dict:
        """``fully_shard``'s keyword arguments on ``mesh``."""
        from torch.distributed.fsdp import MixedPrecisionPolicy
        kwargs = {"mesh": mesh}
        if not self.reshard_after_forward:  # True: FSDP2's default (None), which spares the root
            kwargs["reshard_after_forward"] = False
        if self.mp_param_dtype or self.mp_reduce_dtype:
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=self.mp_param_dtype and _DTYPES[self.mp_param_dtype],
                reduce_dtype=self.mp_reduce_dtype and _DTYPES[self.mp_reduce_dtype])
        return kwargs

    def as_dict(self) -> dict:
        """The record's ``sharding`` for a rank traced whole: this setup, the process group, and
        ``extrapolated_from_depths`` None (``extrapolate`` sets the depths it measured)."""
        return {"process_group": PROCESS_GROUP, **dataclasses.asdict(self), "extrapolated_from_depths": None}


@contextlib.contextmanager
def fake_world(world_size: int) -> Iterator[object]:
    """This process as rank 0 of ``world_size`` ranks on the fake process group; yields the
    1-D CPU ``DeviceMesh`` (made before any fake tensor exists: making it reads real tensors).
    A ScaleError where a process group is already initialised here (a torchrun rank)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise ScaleError("a process group is already initialised in this process; the estimate makes its own fake "
                         "one: run it in a process of its own, not under torchrun")
    # init_process_group wraps sys.excepthook to prefix "[rank0]: " to every line of a traceback,
    # and never unwraps it: after a hundred estimates a traceback had a hundred prefixes a line.
    hook = sys.excepthook
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()
        sys.excepthook = hook


def at(flavor: Flavor, *, depth: int | None = None, batch: int | None = None, seq_len: int | None = None) -> Flavor:
    """``flavor`` with another depth, per-rank batch or sequence length (same name), traced on
    fake tensors on the CPU (``cpu_mode="estimate"``). A ScaleError names a bad value."""
    for name, value in (("depth", depth), ("batch", batch), ("sequence length", seq_len)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ScaleError(f"{name} {value!r}: give a whole number, 1 or more")
    changes = {k: v for k, v in (("depth", depth), ("batch", batch), ("seq_len", seq_len)) if v is not None}
    return dataclasses.replace(flavor, cpu_mode="estimate", **changes)


def _probe(training):
    probe = FSDPMemTrackerProbe(training.device, training.model, training.optimizer, training.x)
    probe.method = FAKE_FSDP_MEMTRACKER
    return probe


def estimate_rank(flavor: Flavor, variant: str, setup: ShardedSetup) -> Measurement:
    """Rank 0's figures for one step of ``variant`` at ``flavor`` under FSDP2 over
    ``setup.world_size`` ranks, every layer traced (see the module). Units as the record's:
    bytes, FLOPs (this rank's: its batch), ops. Raises ``ac_bench.distributed.DoesNotCompose``
    for a policy not run under FSDP2, ScaleError where a process group is already up or torch is
    older than ``ESTIMATE_OLDEST_TORCH``. A layer
    that offloads (``whole_layers_offload``, a per-block plan's ``o``/``lo``) sends what it saves
    to a simulated host (``simulated_host``): off the device, counted in ``offloaded_bytes``."""
    too_old = estimate_torch_problem()
    if too_old:
        raise ScaleError(too_old)
    policy = check_composes(get_policy(parse_variant(variant)[0]))
    reason = family_of(flavor).exclusion(policy)
    if reason:
        raise ScaleError(reason)
    device = torch.device("cpu")
    with fake_world(setup.world_size) as mesh, torch._subclasses.fake_tensor.FakeTensorMode(), simulated_host():
        training = build_sharded_training(flavor, variant, device, setup.world_size, 0, **setup.fsdp_kwargs(mesh))
        figures = measure_step(training, _probe, saved_counter_factory=ShardedSavedTensorCounter)
        optimizer = describe_optimizer(training.optimizer)
        del training
    return Measurement(**shape_fields(flavor, variant, policy, device, resolve_dtype(flavor, device)),
                       optimizer=optimizer, **figures.fields(), world_size=setup.world_size, rank=0,
                       sharding={**setup.as_dict(), "phases": figures.phases})


def period(policy: Policy) -> int:
    """Layers after which the policy repeats itself: ``every_other`` 2, ``every_3`` 3,
    ``whole_layers_every_N`` N; 1 for every other policy."""
    return max(int(getattr(policy, "block_step", 1) or 1), int(getattr(policy, "layer_step", 1) or 1))


def extrapolation_depths(policy: Policy, depth: int) -> tuple[int, int, int]:
    """The three depths ``estimate`` measures for ``depth`` layers: ``d, d + p, d + 2p`` with
    ``p = period(policy)`` and ``d >= 2`` the smallest with ``depth - d`` a multiple of ``p``
    (layer 0, which the suite's region policies leave alone, and at least one other layer)."""
    p = period(policy)
    d = 2 + (depth - 2) % p
    return d, d + p, d + 2 * p


def _numbers(record: Measurement) -> dict[str, int]:
    """The figures checked for affinity and extrapolated: every metric but ``peak_bytes``, each
    phase's peak and breakdown (``sharding["phases"]``), FLOPs by op. The step's peak is the
    largest phase peak, and which phase that is can change with depth (at 405B over 8 ranks the
    optimizer step at 2 layers, backward at 4): each phase is affine, their maximum need not be."""
    out = {name: getattr(record, name) for name in METRICS if getattr(record, name) is not None and name != "peak_bytes"}
    for phase, figures in record.sharding["phases"].items():
        out[f"{phase} peak"] = figures["peak_bytes"]
        out.update({f"{phase} breakdown[{k}]": v for k, v in (figures["breakdown"] or {}).items()})
    out.update({f"flops_by_op[{k}]": v for k, v in record.flops_by_op.items()})
    return out


def extrapolate(records: tuple[Measurement, Measurement, Measurement], depth: int) -> Measurement:
    """The record at ``depth`` layers from three records at depths ``d, d + p, d + 2p``: each
    figure ``f(d) + (depth - d) / p * (f(d + p) - f(d))``. NotAffine names the first figure whose
    two differences are not equal (exactly: the figures are integers)."""
    a, b, c = records
    p = b.depth - a.depth
    if p <= 0 or c.depth - b.depth != p or (depth - a.depth) % p:
        raise ScaleError(f"depths {a.depth}, {b.depth}, {c.depth} do not step evenly to depth {depth}")
    fa, fb, fc = _numbers(a), _numbers(b), _numbers(c)
    if not (set(fa) == set(fb) == set(fc)):
        odd = sorted(set(fa) ^ set(fb) | set(fb) ^ set(fc))
        raise NotAffine(f"{a.flavor} {a.variant} at world size {a.world_size}: the figures differ in kind between "
                        f"depths {a.depth}, {b.depth}, {c.depth} ({', '.join(odd[:3])}); estimate it at full depth "
                        f"(--full-depth)")
    for name in fa:
        if fb[name] - fa[name] != fc[name] - fb[name]:
            raise NotAffine(f"{a.flavor} {a.variant} at world size {a.world_size}: {name} is {fa[name]:,}, "
                            f"{fb[name]:,}, {fc[name]:,} at depths {a.depth}, {b.depth}, {c.depth}, not affine in "
                            f"the number of layers; estimate it at full depth (--full-depth)")
    steps = (depth - a.depth) // p

    def ext(name: str) -> int:
        return fa[name] + steps * (fb[name] - fa[name])

    # A peak is the largest of the step's moments, each affine in depth: three shallow depths can
    # all lie on a moment that a deeper model outgrows. At Llama-3-8B's width, sequence 1024, over
    # 64 ranks, `none`'s peak grew 13.6 MB a layer at depths 2 to 6 (a moment of backward) and then
    # 205.7 MB (the end of the forward, every layer's activations kept): extrapolated from 2, 3, 4
    # to 32 layers it came out 4.5 GiB under the trace of all 32 (2026-12-01). The forward+backward
    # peak holds at least what the forward keeps; an extrapolation that says otherwise is refused.
    if "activation_peak_bytes" in fa and "forward_kept_bytes" in fa \
            and ext("activation_peak_bytes") < ext("forward_kept_bytes"):
        raise NotAffine(f"{a.flavor} {a.variant} at world size {a.world_size}: extrapolated from depths {a.depth}, "
                        f"{b.depth}, {c.depth} to {depth}, the activation peak ({ext('activation_peak_bytes'):,} B) "
                        f"comes out below what the forward keeps ({ext('forward_kept_bytes'):,} B): the peak is at a "
                        f"moment that deeper models outgrow; estimate it at full depth (--full-depth)")

    metrics = {name: ext(name) for name in METRICS if getattr(a, name) is not None and name != "peak_bytes"}
    phases = {phase: {"peak_bytes": ext(f"{phase} peak"),
                      "breakdown": None if figures["breakdown"] is None else
                      {k: ext(f"{phase} breakdown[{k}]") for k in figures["breakdown"]}}
              for phase, figures in a.sharding["phases"].items()}
    top = max(phases, key=lambda phase: phases[phase]["peak_bytes"])
    metrics["peak_bytes"] = phases[top]["peak_bytes"]
    breakdown = phases[top]["breakdown"]
    flops_by_op = {k: ext(f"flops_by_op[{k}]") for k in a.flops_by_op}
    sharding = {**a.sharding, "phases": phases, "extrapolated_from_depths": [a.depth, b.depth, c.depth]}
    return dataclasses.replace(a, depth=depth, breakdown=breakdown, flops_by_op=flops_by_op, sharding=sharding,
                               **metrics)


def estimate(flavor: Flavor, variant: str, setup: ShardedSetup, full_depth: bool = False) -> Measurement:
    """Rank 0's record for ``variant`` at ``flavor`` (its depth, per-rank batch and sequence
    length) under FSDP2 as ``setup`` says: traced whole up to ``MAX_TRACED_DEPTH`` layers or with
    ``full_depth``, else extrapolated from three depths (``extrapolation_depths``, ``extrapolate``),
    moved one period deeper, up to ``MAX_SHIFTS`` times, while they are not affine (``extrapolate``'s
    NotAffine: a figure off the line, or a peak below what the forward keeps); then traced at every
    layer. Raises what ``estimate_rank`` raises. A ``sequential``
    policy is traced whole: its segments follow the depth (round(sqrt(depth)) of them, or
    depth // K layers each), so its figures are not affine in it."""
    policy = get_policy(parse_variant(variant)[0])
    if full_depth or flavor.depth <= MAX_TRACED_DEPTH or policy.kind == "sequential":
        return estimate_rank(flavor, variant, setup)
    depths = extrapolation_depths(policy, flavor.depth)
    if depths[-1] >= flavor.depth:
        return estimate_rank(flavor, variant, setup)
    step = depths[1] - depths[0]
    records = [estimate_rank(at(flavor, depth=d), variant, setup) for d in depths]
    while True:
        try:
            return extrapolate(tuple(records[-3:]), flavor.depth)  # type: ignore[arg-type]
        except NotAffine:
            deeper = records[-1].depth + step
            if len(records) - 3 >= MAX_SHIFTS or deeper >= flavor.depth:
                # No three depths in reach are affine: trace every layer (slower, exact).
                return estimate_rank(flavor, variant, setup)
            records.append(estimate_rank(at(flavor, depth=deeper), variant, setup))


def _llama3(name: str, **sizes) -> Flavor:
    return Flavor(name, batch=1, seq_len=8192, dtype="float32", cpu_mode="estimate", family="hf-llama3",
                  rope_theta=500000.0, norm_eps=1e-5, **sizes)


def _qwen3(name: str, **sizes) -> Flavor:
    return Flavor(name, batch=1, seq_len=8192, dtype="float32", cpu_mode="estimate", family="hf-qwen3-published",
                  rope_theta=1000000.0, norm_eps=1e-6, **sizes)


#: Llama 3 at its published shapes (Meta's ``params.json``: ``dim``, ``n_layers``, ``n_heads``,
#: ``n_kv_heads``, ``ffn_dim_multiplier``, ``multiple_of``, ``vocab_size`` 128256, ``rope_theta``
#: 500000; torchtitan's ``llama3_configs`` the same), and the dense Qwen3 8B and 14B at theirs
#: (Qwen's ``config.json``; torchtitan 0.3.0's ``qwen3_configs``: ``dim``, ``n_layers``,
#: ``n_heads``, ``n_kv_heads``, ``head_dim`` 128 = dim / n_heads, ``hidden_dim``, ``vocab_size``
#: 151936, ``theta`` 1e6, RMSNorm epsilon 1e-6, untied output head), per-rank batch 1, sequence
#: 8192, float32 parameters (the setup's mixed precision computes in bfloat16). Families
#: ``hf-llama3`` and ``hf-qwen3-published``. Qwen3-32B is left out: its 64 heads of 128 are wider
#: than its hidden size 5120, which a flavor (head size = d_model / n_heads) cannot state.
SCALE_MODELS: dict[str, Flavor] = {f.name: f for f in (
    _llama3("llama3-8b", d_model=4096, n_heads=32, depth=32, n_kv_heads=8, multiple_of=1024, ffn_dim_multiplier=1.3),
    _llama3("llama3-70b", d_model=8192, n_heads=64, depth=80, n_kv_heads=8, multiple_of=4096,
            ffn_dim_multiplier=1.3),
    _llama3("llama3-405b", d_model=16384, n_heads=128, depth=126, n_kv_heads=8, multiple_of=4096,
            ffn_dim_multiplier=1.2),
    _qwen3("qwen3-8b", d_model=4096, n_heads=32, depth=36, n_kv_heads=8, ffn_hidden=12288),
    _qwen3("qwen3-14b", d_model=5120, n_heads=40, depth=40, n_kv_heads=8, ffn_hidden=17408),
)}

#: The transformers model class of each scale family (for the message when transformers lacks it).
_SCALE_CLASSES = {"hf-llama3": "LlamaForCausalLM", "hf-qwen3-published": "Qwen3ForCausalLM"}


def scale_model(name: str) -> Flavor:
    """A model of ``SCALE_MODELS`` with its family registered (transformers imported). A
    ScaleError names the models, or says how to install transformers."""
    if name not in SCALE_MODELS:
        raise ScaleError(f"unknown model {name!r}; choose {', '.join(SCALE_MODELS)}")
    flavor = SCALE_MODELS[name]
    try:
        from ac_bench.models import hf  # registers hf-llama3, hf-qwen3-published
    except ImportError as exc:
        raise ScaleError(f"model {name} is transformers' {_SCALE_CLASSES[flavor.family]}, and transformers does not "
                         f"import ({exc}); install it: pip install -e '.[hf]'") from None
    from ac_bench.models.families import FAMILIES
    if flavor.family not in FAMILIES:
        raise ScaleError(f"model {name} is transformers' {_SCALE_CLASSES[flavor.family]}, which transformers "
                         f"{hf.transformers.__version__} lacks; upgrade it: pip install -e '.[hf]'")
    return SCALE_MODELS[name]


#: The policy the plan at scale adds where offloading is priced (``--offload-cost``): whole
#: layers recomputed, their inputs in host memory (transformers' ``offload=True``).
OFFLOADING_POLICY = "whole_layers_offload"


def scale_policies(flavor: Flavor, offload: bool = False) -> tuple[str, ...]:
    """The policies estimated for ``flavor`` under FSDP2: every policy of the registry and of
    the family's ``extra_policies`` that composes with FSDP2 and that the family runs, less
    ``offload`` (its ``save_on_cpu`` hooks wrap the whole forward, so on the CPU the host memory
    it offloads to is the memory measured) and the compile budgets (not run under FSDP2); with
    ``offload``, also ``OFFLOADING_POLICY`` and ``whole_layers``, which recomputes the same and
    offloads nothing (a family that does not list ``whole_layers`` would otherwise have only the
    offloading one), where the family runs them."""
    from ac_bench.distributed import NOT_COMPOSED
    from ac_bench.models import POLICIES
    family = family_of(flavor)
    names = [*POLICIES, *family.extra_policies, *["whole_layers", OFFLOADING_POLICY] * offload]
    out = []
    for name in dict.fromkeys(names):
        policy = get_policy(name)
        if policy.kind in NOT_COMPOSED or policy.kind == "offload" or not family.applies(policy):
            continue
        out.append(name)
    return tuple(out)


#: Fields of a record that say how it was obtained, not what was measured: not compared.
HOW_FIELDS = frozenset({"memory_method", "step_seconds", "sharding", "rank", "breakdown", "schema_version"})


def _meta_model(record: Measurement):
    """The record's model built on the meta device (no memory), and its dtype."""
    from ac_bench.models import get_flavor
    from ac_bench.models.families import build_model
    flavor = dataclasses.replace(get_flavor(record.flavor), batch=record.batch, seq_len=record.seq_len)
    dtype = getattr(torch, record.dtype)
    return build_model(flavor, record.attention, "meta", dtype), dtype


def _padded_bytes(params, world_size: int, dtype: torch.dtype) -> int:
    """``params`` with dim 0 padded to a multiple of ``world_size`` (FSDP2's all-gather output), bytes."""
    return sum(-(-p.shape[0] // world_size) * world_size * (p.numel() // p.shape[0]) if p.dim() else p.numel()
               for p in params) * dtype.itemsize


def fsdp_unit_bytes(record: Measurement) -> int:
    """FSDP2's buffers for one unit at the record's world size, in bytes: the analytic model's
    ``fsdp_unsharded_peak_bytes`` where the family has one; else counted on the model built on
    the meta device: over the FSDP units (each decoder layer, and the root's own parameters:
    embedding, final norm, output head), the largest sum of its parameters with dim 0 padded to
    a multiple of the world size, in the record's dtype."""
    from ac_bench.analytic import NotModelled, Shape, fsdp_unsharded_peak_bytes
    try:
        return fsdp_unsharded_peak_bytes(Shape.of_record(record), record.world_size)
    except NotModelled:
        pass
    model, dtype = _meta_model(record)
    in_blocks = {id(p) for p in model.blocks.parameters()}
    units = [_padded_bytes(block.parameters(), record.world_size, dtype) for block in model.blocks]
    units.append(_padded_bytes([p for p in model.parameters() if id(p) not in in_blocks], record.world_size, dtype))
    return max(units)


def rank_shard_bytes(record: Measurement) -> int:
    """One rank's shard of every parameter at the record's world size (ceil(dim0 / W) rows each),
    bytes: the analytic model's ``sharded_parameter_bytes`` where the family has one, else counted
    on the model built on the meta device."""
    from ac_bench.analytic import NotModelled, Shape, sharded_parameter_bytes
    try:
        return sharded_parameter_bytes(Shape.of_record(record), record.world_size)
    except NotModelled:
        pass
    model, dtype = _meta_model(record)
    return _padded_bytes(list(model.parameters()), record.world_size, dtype) // record.world_size


def launch_differences(estimated: Measurement, launched: Measurement) -> list[str]:
    """How an estimated rank differs from a real launch's rank of the same variant, flavor and
    world size (``torchrun -m ac_bench.distributed``), beyond what the module allows: every
    figure and descriptive field equal, except each peak of
    ``ac_bench.distributed.PEAK_METRICS``, which the real rank may exceed by FSDP's transient
    buffers of one block (``ac_bench.analytic.fsdp_unsharded_peak_bytes``, bytes) and not
    undercut; the breakdown at the peak, whose categories other than FSDP's transient ones
    (``ac_bench.probes.memory.FSDP_TRANSIENT``) and ``temporaries`` may differ by at most that
    bound in all (gloo's timing can move the launch's peak to a neighbouring moment; temporaries
    within the same bound: the peak moves with them; ``fsdp_unit_bytes`` is the bound); and ``backward_ops``, which the launch
    may exceed by one op per layer and one for the root (gloo's reduce-scatter dispatches an op
    on the calling thread that the fake process group does not: 3 more at ``tiny``, 3 layers,
    2026-11-30), and ``backward_nonmatmul_bytes`` by what those ops read and write: each is a
    ``copy_`` of a reduce-scattered gradient shard into place (the shard read, its destination
    read and written), so at most three times the rank's parameter shard
    (``sharded_parameter_bytes``: 3 x 76,224 = 228,672 B more at ``tiny`` over 2 ranks, exactly).
    One line per difference."""
    from ac_bench.distributed import PEAK_METRICS
    from ac_bench.probes.memory import FSDP_TRANSIENT

    where = f"{launched.case_id} rank {launched.rank}"
    bound = fsdp_unit_bytes(launched)
    est, real = estimated.as_dict(), launched.as_dict()
    problems = []
    for name in sorted(set(est) - HOW_FIELDS):
        if name in PEAK_METRICS:
            over = real[name] - est[name]
            if not 0 <= over <= bound:
                problems.append(f"{where}: {name} launched {real[name]:,} B, estimated {est[name]:,} B: the launch "
                                f"{'undercuts' if over < 0 else 'exceeds'} the estimate by {abs(over):,} B "
                                f"(allowed: 0 to {bound:,} B, one block's FSDP buffers)")
        elif name == "backward_ops" and est[name] is not None and real[name] is not None:
            if not 0 <= real[name] - est[name] <= launched.depth + 1:
                problems.append(f"{where}: backward_ops launched {real[name]}, estimated {est[name]}: more apart than "
                                f"one op per layer and one for the root ({launched.depth + 1})")
        elif name == "backward_nonmatmul_bytes" and est[name] is not None and real[name] is not None:
            copies = 3 * rank_shard_bytes(launched)
            if not 0 <= real[name] - est[name] <= copies:
                problems.append(f"{where}: backward_nonmatmul_bytes launched {real[name]:,}, estimated {est[name]:,}: "
                                f"more apart than gloo's copy of each reduce-scattered gradient shard ({copies:,} B)")
        elif est[name] != real[name]:
            problems.append(f"{where}: {name} launched {real[name]!r}, estimated {est[name]!r}")
    steady = {k: v for k, v in (launched.breakdown or {}).items() if k not in FSDP_TRANSIENT}
    steady_est = {k: v for k, v in (estimated.breakdown or {}).items() if k not in FSDP_TRANSIENT}
    over = steady.pop("temporaries", 0) - steady_est.pop("temporaries", 0)
    # gloo's timing can put the launch's peak at a neighbouring moment (its FSDP buffers freed a
    # little later), where one activation more or less is alive: tiny-w2-every_3-eager's rank 1
    # once had 4,096 B more activations at its peak (2026-11-30, one clean-clone run in three).
    # Categories may then differ, by at most one block's FSDP buffers in all.
    shifted = sum(abs(steady.get(k, 0) - steady_est.get(k, 0)) for k in {*steady, *steady_est})
    if shifted > bound or not 0 <= over <= bound:
        problems.append(f"{where}: the breakdown at the peak, FSDP's transient buffers left out, launched {steady}, "
                        f"estimated {steady_est}")
    return problems


GIB = 2 ** 30


class NothingFits(ScaleError):
    """No policy fits the per-GPU memory; the message says the smallest memory and world size that do."""


@dataclasses.dataclass
class ScalePlan:
    """Every policy's estimated rank at one model, setup and per-GPU memory (``budget_bytes``),
    and the cheapest that fits (``fitting``: the fewest recomputed FLOPs, offloading priced in;
    ties: fewer ops in backward, then the lower peak). ``records``: policy name -> record, the
    order of ``scale_policies``."""

    model: Flavor
    setup: ShardedSetup
    budget_bytes: int
    attention: str
    records: dict[str, Measurement]
    full_depth: bool = False
    #: FLOPs per offloaded byte (``--offload-cost``), or None: nothing offloads.
    offload_cost: int | None = None

    def recompute_flops(self, policy: str) -> int:
        """FLOPs per step and rank that ``policy`` adds to ``none``'s (its recomputation)."""
        return self.records[policy].flops - self.records["none"].flops

    def cost(self, policy: str) -> int:
        """What the plan minimises, in FLOPs per step and rank: the recomputed FLOPs, plus
        ``offload_cost`` for each byte the policy offloads to host memory (copied out in forward
        and back in backward over the host link: ``ac_bench.blockplan.offload_cost``)."""
        return self.recompute_flops(policy) + (self.offload_cost or 0) * (self.records[policy].offloaded_bytes or 0)

    def fitting(self, budget_bytes: int | None = None) -> list[str]:
        """Policies whose per-rank peak is at most ``budget_bytes`` (default: the plan's budget),
        cheapest first: the lowest ``cost`` (the recomputed FLOPs, offloading priced in), then
        fewest ops in backward (a selective policy that saves every matmul still recomputes its
        elementwise ops, which FLOPs do not count), then the lowest peak."""
        budget = self.budget_bytes if budget_bytes is None else budget_bytes
        fit = [p for p, r in self.records.items() if r.peak_bytes <= budget]
        return sorted(fit, key=lambda p: (self.cost(p), self.records[p].backward_ops or 0,
                                          self.records[p].peak_bytes))

    def cheapest(self, budget_bytes: int | None = None) -> str | None:
        """The first of ``fitting(budget_bytes)``, or None where nothing fits."""
        fit = self.fitting(budget_bytes)
        return fit[0] if fit else None

    @property
    def chosen(self) -> str | None:
        """The cheapest policy that fits the plan's budget."""
        return self.cheapest()

    def lowest(self) -> str:
        """The policy with the lowest per-rank peak."""
        return min(self.records, key=lambda p: (self.records[p].peak_bytes, self.recompute_flops(p)))


def plan_at_scale(model: Flavor, setup: ShardedSetup, budget_bytes: int, attention: str = "sdpa",
                  policies: tuple[str, ...] | None = None, full_depth: bool = False,
                  offload_cost: int | None = None) -> ScalePlan:
    """Estimate every policy (``scale_policies``, or ``policies``) at ``model`` under ``setup``
    (``estimate``: a few seconds each; ``full_depth`` traces every layer) and return the plan
    for ``budget_bytes`` per GPU. ``offload_cost`` (FLOPs per offloaded byte) adds
    ``OFFLOADING_POLICY`` to ``scale_policies`` and prices what it offloads."""
    names = policies or scale_policies(model, offload=offload_cost is not None)
    if "none" not in names:
        names = ("none", *names)
    records = {p: estimate(model, f"{p}-{attention}", setup, full_depth) for p in names}
    return ScalePlan(model, setup, budget_bytes, attention, records, full_depth, offload_cost)


def smallest_world_size(plan: ScalePlan, max_world_size: int = 4096) -> tuple[int, Measurement] | None:
    """Where the plan's lowest-peak policy fits the budget at a larger world size: the smallest
    (doubling from the plan's) and its record. ``max_world_size`` is estimated first, so a budget
    that does not fit even there costs one estimate rather than one per doubling (at Llama-3-8B
    from 16 to 4,096 ranks, 49 s in all): then ``(max_world_size, record)`` with its peak above the budget. None where the
    plan's world size is already over half ``max_world_size``."""
    policy = plan.lowest()

    def at_world(world: int) -> Measurement:
        return estimate(plan.model, f"{policy}-{plan.attention}", dataclasses.replace(plan.setup, world_size=world),
                        plan.full_depth)

    if plan.setup.world_size * 2 > max_world_size:
        return None
    largest = at_world(max_world_size)
    if largest.peak_bytes > plan.budget_bytes:
        return max_world_size, largest
    world = plan.setup.world_size * 2
    while world < max_world_size:
        record = at_world(world)
        if record.peak_bytes <= plan.budget_bytes:
            return world, record
        world *= 2
    return max_world_size, largest


def nothing_fits_line(plan: ScalePlan, max_world_size: int = 4096) -> str:
    """The one line for a budget no policy fits: the smallest feasible memory per GPU at this
    world size, and the smallest world size (doubling, up to ``max_world_size``) at which the
    lowest-peak policy fits, or its peak at ``max_world_size`` where even that is over the budget."""
    lowest = plan.lowest()
    peak, host = plan.records[lowest].peak_bytes, plan.records[lowest].offloaded_bytes
    line = (f"nothing fits {gib_text(plan.budget_bytes)} GiB per GPU for {plan.model.name} at world size "
            f"{plan.setup.world_size}: the smallest feasible is {gib_at_least(peak, 2)} GiB ({lowest}"
            + (f", with {bytes_text(host)} per rank in host memory)" if host else ")"))
    lower = "lower the sequence length" + (" or the per-rank batch" if plan.model.batch > 1 else "")
    found = smallest_world_size(plan, max_world_size)
    if found is None:
        return line + f"; {lower}"
    world, record = found
    if record.peak_bytes <= plan.budget_bytes:
        return line + f", or {lowest} at world size {world} ({record.peak_bytes / GIB:.2f} GiB per rank)"
    return line + (f"; even at world size {world} {lowest} needs {gib_at_least(record.peak_bytes, 2)} GiB per rank: "
                   f"{lower}")


def describe_setup(model: Flavor, setup: ShardedSetup) -> str:
    """One line: the model, its shape and the sharded setup, as the plan prints it."""
    mp = (f"{setup.mp_param_dtype} compute, {setup.mp_reduce_dtype} gradient reduction over {model.dtype} parameters"
          if setup.mp_param_dtype or setup.mp_reduce_dtype else f"{model.dtype} throughout")
    description = family_of(model).description
    return (f"{model.name} ({description + '; ' if description else ''}{model.depth} layers, hidden {model.d_model}, "
            f"{model.n_heads} heads{f', {model.n_kv_heads} KV heads' if model.n_kv_heads else ''}), FSDP2 over {setup.world_size} "
            f"rank{'s' * (setup.world_size > 1)}, per-rank batch {model.batch}, sequence {model.seq_len}, {mp}, reshard_after_forward "
            f"{setup.reshard_after_forward}, AdamW")


#: How far above the CPU's figures the H200's single-process peaks came out (``seed``, 5% to
#: 19%; ``docs/results.md``): the CUDA caching allocator's rounding and fragmentation, which the
#: estimate does not count. A plan whose margin is under this share of its peak says so.
GPU_EXCESS_SEEN = 0.19


def plan_lines(plan: ScalePlan) -> list[str]:
    """The plan as printed: the setup, the answer, then one table row per policy. Bytes in the
    unit the largest peak fills (``ac_bench.outputs.byte_unit``), so a small model's table is not
    all 0.00 GiB; FLOPs in the unit ``none``'s step fills (``flop_unit``);
    the budget as given, in GiB."""
    unit, size = byte_unit(max(r.peak_bytes for r in plan.records.values()))
    funit, fsize = flop_unit(plan.records["none"].flops)
    budget_text = f"{gib_text(plan.budget_bytes)} GiB"
    lines = [describe_setup(plan.model, plan.setup), ""]
    chosen = plan.chosen
    if chosen is not None:
        r = plan.records[chosen]
        # "plan: none fits" reads as "nothing fits" (a fresh user's check, 2026-12-01).
        label = "none (no checkpointing)" if chosen == "none" else chosen
        lines.append(f"plan: {label} fits {budget_text} per GPU: per-rank peak {r.peak_bytes / size:.2f} {unit}, "
                     f"margin {bytes_text(plan.budget_bytes - r.peak_bytes)}, recomputes "
                     f"{plan.recompute_flops(chosen) / fsize:.1f} {funit} per step and rank "
                     f"({plan.recompute_flops(chosen) / plan.records['none'].flops:+.1%} over none)"
                     + (f", offloads {bytes_text(r.offloaded_bytes)} per rank to host memory (priced "
                        f"{plan.offload_cost} FLOPs a byte: {flops_text(plan.cost(chosen) - plan.recompute_flops(chosen))})"
                        if r.offloaded_bytes else "")
                     + (f"; the margin is thin, {(plan.budget_bytes - r.peak_bytes) / r.peak_bytes:.1%} of the peak: "
                        f"on an H200 peaks came out up to {GPU_EXCESS_SEEN:.0%} above the estimate, which here would "
                        f"be {gib_at_least(int(r.peak_bytes * (1 + GPU_EXCESS_SEEN)), 2)} GiB "
                        f"(docs/scale.md#what-the-estimate-does-not-count)"
                        if plan.budget_bytes - r.peak_bytes < GPU_EXCESS_SEEN * r.peak_bytes else ""))
    offloads = plan.offload_cost is not None
    # The margin in its own unit: a small model's peaks are KiB, a 1 GiB budget's margins are not.
    munit, msize = byte_unit(max(abs(plan.budget_bytes - r.peak_bytes) for r in plan.records.values()))
    lines += ["", f"| policy | per-rank peak {unit} (the smallest GPU it fits) | fits {budget_text} | margin {munit} | "
              f"recompute {funit} | resident {unit} | kept at end of forward {unit} |"
              + (f" offloaded to host {unit} |" if offloads else ""),
              "| --- | ---: | :---: | ---: | ---: | ---: | ---: |" + " ---: |" * offloads]
    for name, r in sorted(plan.records.items(), key=lambda kv: kv[1].peak_bytes):
        lines.append(f"| {name} | {r.peak_bytes / size:.2f} | {'yes' if r.peak_bytes <= plan.budget_bytes else 'no'} | "
                     f"{(plan.budget_bytes - r.peak_bytes) / msize:+.2f} | {plan.recompute_flops(name) / fsize:.1f} | "
                     f"{r.resident_bytes / size:.2f} | {r.forward_kept_bytes / size:.2f} |"
                     + (f" {(r.offloaded_bytes or 0) / size:.2f} |" if offloads else ""))
    depths = {name: r.sharding.get("extrapolated_from_depths") for name, r in plan.records.items()}
    some = next((d for d in depths.values() if d), None)
    whole = [name for name, d in depths.items() if not d]
    how = (f"traced at depths such as {some} and extrapolated to {plan.model.depth} layers (affine, checked)"
           + (f"; {', '.join(whole)} traced at all {plan.model.depth} layers" if whole else "")
           if some else f"all {plan.model.depth} layers traced")
    lines += ["", f"Estimated for rank 0 on the fake process group and fake tensors (FSDPMemTracker), {how}; "
              f"peaks as the suite measures them: every tensor's storage, no allocator rounding or fragmentation, no "
              f"CUDA/NCCL context or workspace."
              + (f" Offloading is priced at {plan.offload_cost} FLOPs per byte (--offload-cost); what a policy offloads "
                 f"leaves the device when saved and comes back for backward (a simulated host: save_on_cpu's pinned "
                 f"copies, counted, not made), and every GPU of a node needs that much host memory."
                 if offloads else "")]
    return lines
