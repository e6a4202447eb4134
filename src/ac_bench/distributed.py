"""Checkpointing under FSDP2: one training step per variant on every rank of a torchrun job.

    python -m ac_bench.distributed --nproc-per-node 2 --flavor tiny --out DIR [--variants none-sdpa,full-sdpa]
    torchrun --nproc-per-node 2 -m ac_bench.distributed --flavor tiny --out DIR [--variants ...]

The first form checks the arguments once, then launches the ranks on this machine through
torchrun's own launcher (``torch.distributed.run``, standalone rendezvous) in the same process:
bad input is one line before any rank starts, and a rank that fails is one line after its own
output, not torchrun's traceback and failure table. Under ``torchrun`` itself (the second form,
and across machines), any torchrun option passes through (``--nnodes``, ``--node-rank``, ``--rdzv-backend c10d``,
``--rdzv-endpoint HOST:PORT``; docs/distributed.md). Per rank, as torchtitan's
``parallelize_llama`` orders it: the model with the policy applied (checkpointing, then compile
where the policy compiles), then ``fully_shard`` on each block and on the root, AdamW over the
sharded parameters, and ``ac_bench.record.Training.step``. gloo on the CPU, NCCL on CUDA
(``ac_bench.probes.device``). Every rank steps ``flavor.batch`` samples (its slice of one global batch of
``world_size * flavor.batch``, drawn as a single process would draw it), so each rank's
activations are the single-process run's and what sharding changes is the resident state.

Each rank writes its records (``ac_bench.record.Measurement``, with ``world_size`` and ``rank``)
atomically to ``DIR/rank{R}.json``, after every variant (a launch stopped part-way keeps them); rank 0 gathers every rank's records over the process group
(so it works across machines that share no file system) and writes ``DIR/records.json``.
With ``--save-state`` rank 0 also writes ``DIR/state/{variant}.pt``: the full gradients of the
first step and the full parameters after it, which the benchmark's sharded tests compare
with the single-process run of the global batch and across policies.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX
from torch.distributed.fsdp import fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter

from ac_bench.cases import variant_problem
from ac_bench.models import (
    ATTENTIONS,
    FLAVORS,
    KINDS,
    POLICIES,
    Flavor,
    Policy,
    get_flavor,
    get_policy,
    load_family_specs,
    parse_variant,
    resolve_dtype,
    variant_id,
)
from ac_bench.outputs import folder_problem, write_text_atomic
from ac_bench.probes.device import cuda_available, distributed_backend, rank_device, usable_cores
from ac_bench.probes.memory import FSDPMemTrackerProbe, ShardedSavedTensorCounter
from ac_bench.probes.timing import device_synchronized_timer, interleaved_medians
from ac_bench.record import Measurement, Training, build_training, describe_optimizer, make_optimizer, measure_step, shape_fields

#: Policy kinds that are not run under FSDP2, and why (each kind declares it,
#: ``Policy.fsdp2_incompatibility``; printed when a run leaves them out, the error when one is asked for).
NOT_COMPOSED: dict[str, str] = {k.kind: k.fsdp2_incompatibility for k in KINDS if k.fsdp2_incompatibility}

#: The policies run under FSDP2 by default: every policy of the registry whose kind composes.
DEFAULT_POLICIES: tuple[str, ...] = tuple(n for n, p in POLICIES.items() if p.fsdp2_incompatibility is None)
DEFAULT_VARIANTS: tuple[str, ...] = tuple(variant_id(p, a) for p in DEFAULT_POLICIES for a in ATTENTIONS)

RECORDS_FILE = "records.json"


class DoesNotCompose(ValueError):
    """A policy asked for under FSDP2 that this suite does not run there; the message says why."""


def check_composes(policy: Policy) -> Policy:
    """``policy``, or DoesNotCompose naming the policy and the reason."""
    reason = NOT_COMPOSED.get(policy.kind)
    if reason:
        raise DoesNotCompose(f"policy {policy.name!r} (kind {policy.kind}) is not run under FSDP2: {reason}")
    return policy


def global_flavor(flavor: Flavor, world_size: int) -> Flavor:
    """The flavor at the global batch: ``world_size * flavor.batch`` samples (same name)."""
    return dataclasses.replace(flavor, batch=flavor.batch * world_size)


#: How long a collective's buffers may stay held by gloo's thread after the collective completed
#: before ``wait_released`` gives up (seconds); it takes microseconds on a quiet machine.
RELEASE_TIMEOUT_S = 60.0


def storage_references(*tensors: torch.Tensor) -> list[int]:
    """How many references hold each tensor's storage (its C++ use count; views count one each)."""
    return [torch._C._storage_Use_Count(t.untyped_storage()._cdata) for t in tensors]


def wait_released(tensors: tuple[torch.Tensor, ...], before: list[int], what: str) -> None:
    """Return once no storage of ``tensors`` is held by more references than ``before``
    (``storage_references`` taken before the collective); RuntimeError naming ``what`` after
    ``RELEASE_TIMEOUT_S`` seconds."""
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while any(now > then for now, then in zip(storage_references(*tensors), before)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gloo's thread still held the {what} buffers {RELEASE_TIMEOUT_S:.0f} s after the "
                               f"collective completed")
        time.sleep(1e-4)  # lets gloo's thread (which may need the GIL to drop its tensors) run


def call_released(collective, tensors: tuple[torch.Tensor, ...], what: str) -> None:
    """``collective()`` (synchronous), then ``wait_released`` for ``tensors``' storages, their
    references counted before it."""
    before = storage_references(*tensors)
    collective()
    wait_released(tensors, before, what)


class GlooReleasedAllGather(DefaultAllGather):
    """FSDP2's own all-gather (``DefaultAllGather``: the same allocation, the same collective),
    which returns only when gloo's thread has let go of the buffers. A gloo work object
    completes (``wait`` returns) before the thread that ran it drops its references to the
    output, so the output FSDP2 frees next can outlive it by one more allocation: one block's
    all-gather (50,816 B at ``tiny``) was then counted at a peak it is not part of, and the peak
    moved to another moment of the step (rank 0 of ``core_attn-eager`` in a CI run, 2026-11-30).
    Waiting for the release frees the collective's buffers where the program frees them, as the
    fake process group of the estimate does; it costs time only. It removes that cause of
    run-to-run variation, not every one (docs/distributed.md: peaks still move by up to one
    block now and then, which ``compare_sharded`` and ``launch_differences`` allow)."""

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup,
                 async_op: bool = False) -> dist.Work | None:
        if async_op:  # FSDP2 asks for it only when told to (unshard_async_op); then its own wait applies
            return super().__call__(output_tensor, input_tensor, group, async_op)
        call_released(lambda: super(GlooReleasedAllGather, self).__call__(output_tensor, input_tensor, group),
                      (output_tensor, input_tensor), "all-gather")
        return None


class GlooReleasedReduceScatter(DefaultReduceScatter):
    """FSDP2's own reduce-scatter (``DefaultReduceScatter``), which returns only when gloo's
    thread has let go of the buffers (``GlooReleasedAllGather`` says why)."""

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup,
                 op: object, async_op: bool = False) -> dist.Work | None:
        if async_op:
            return super().__call__(output_tensor, input_tensor, group, op, async_op)
        call_released(lambda: super(GlooReleasedReduceScatter, self).__call__(output_tensor, input_tensor, group, op),
                      (output_tensor, input_tensor), "reduce-scatter")
        return None


def release_in_program_order(*modules: torch.nn.Module) -> None:
    """On a gloo process group, each FSDP2 module's collectives are FSDP2's own that wait for
    gloo's thread to let go of their buffers (``GlooReleasedAllGather``,
    ``GlooReleasedReduceScatter``); on any other backend (NCCL, the fake process group of the
    estimate) nothing changes."""
    if not (dist.is_initialized() and dist.get_backend() == "gloo"):
        return
    for module in modules:
        module.set_custom_all_gather(GlooReleasedAllGather())
        module.set_custom_reduce_scatter(GlooReleasedReduceScatter())


def shard(training: Training, world_size: int, rank: int, **fsdp_kwargs) -> Training:
    """``training`` sharded: ``fully_shard`` on each block, then on the root (the root gets the
    blocks' parameters' leftovers, here none), a fresh AdamW over the sharded (DTensor)
    parameters, and this rank's slice of the global input. ``fsdp_kwargs`` go to every
    ``fully_shard`` call (``mesh``, ``mp_policy``, ``reshard_after_forward``; the estimate of
    ``ac_bench.scale`` passes them); none: FSDP2's defaults, as torchrun runs it here. On gloo
    the collectives wait for gloo's thread to release their buffers (``release_in_program_order``)."""
    model = training.model
    for block in model.blocks:
        fully_shard(block, **fsdp_kwargs)
    fully_shard(model, **fsdp_kwargs)
    release_in_program_order(*model.blocks, model)
    per_rank = training.x.shape[0] // world_size
    x = training.x[rank * per_rank:(rank + 1) * per_rank].clone()
    return Training(model, make_optimizer(model), x, training.policy, training.device)


def build_sharded_training(flavor: Flavor, variant: str, device: torch.device, world_size: int,
                           rank: int, **fsdp_kwargs) -> Training:
    """The variant built as a single process builds it at the global batch (same seed, same
    weights, same input), its policy applied, then sharded over the ranks (``shard``, which
    takes ``fsdp_kwargs``)."""
    policy = check_composes(get_policy(parse_variant(variant)[0]))
    return shard(build_training(global_flavor(flavor, world_size), variant, device, policy), world_size, rank,
                 **fsdp_kwargs)


def parameter_name(name: str) -> str:
    """The parameter's name as in the state dict (checkpoint_wrapper inserts a prefix)."""
    return name.replace(_CHECKPOINT_PREFIX, "")


def full_tensors(model: torch.nn.Module, grads: bool) -> dict[str, torch.Tensor]:
    """Every parameter (or its gradient) gathered in full; a collective: every rank calls it."""
    out = {}
    for name, p in model.named_parameters():
        t = p.grad if grads else p
        out[parameter_name(name)] = t.full_tensor().detach().cpu().clone()
    return out


def timed_steps(training: Training, steps: int = 3) -> float:
    """Median wall time of ``steps`` plain training steps on this rank, in seconds (the device
    synchronised around each)."""
    return interleaved_medians({"step": training.step}, rounds=steps, warmup=0,
                               timer=device_synchronized_timer)["step"]


def measure_sharded(flavor: Flavor, variant: str, device: torch.device, world_size: int, rank: int,
                    state_dir: Path | None = None, timed: bool = True, **fsdp_kwargs) -> Measurement:
    """One variant on this rank: built and sharded, a warm-up step (FLOPs; with ``state_dir``
    the full gradients and parameters after it go to rank 0's file), one step measured by
    FSDPMemTracker (CPU) or the allocator (CUDA), then timed steps (unless ``timed`` is False:
    ``step_seconds`` is then None). ``fsdp_kwargs`` go to ``fully_shard`` (``shard``)."""
    dtype = resolve_dtype(flavor, device)
    cuda_probe = None
    if device.type == "cuda":
        from ac_bench.probes.device import CudaAllocatorProbe  # the allocator probe sees everything on the GPU
        cuda_probe = CudaAllocatorProbe(device)
    training = build_sharded_training(flavor, variant, device, world_size, rank, **fsdp_kwargs)

    def keep_state(t: Training) -> None:
        if state_dir is None:
            return
        grads = full_tensors(t.model, grads=True)
        params = full_tensors(t.model, grads=False)
        if rank == 0:
            state_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"grads": grads, "params": params}, state_dir / f"{variant}.pt")

    figures = measure_step(training, lambda t: cuda_probe or FSDPMemTrackerProbe(device, t.model, t.optimizer, t.x),
                           saved_counter_factory=ShardedSavedTensorCounter, after_warmup=keep_state)
    step_seconds = timed_steps(training) if timed else None
    return Measurement(**shape_fields(flavor, variant, training.policy, device, dtype),
                       optimizer=describe_optimizer(training.optimizer), **figures.fields(),
                       world_size=world_size, rank=rank, step_seconds=step_seconds)


def write_json_atomic(path: Path, data: object) -> None:
    """``data`` as indented, key-sorted JSON, written atomically (``ac_bench.outputs.write_text_atomic``)."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def default_variants(flavor: Flavor | None = None) -> tuple[str, ...]:
    """The variants launched when none are named: of the variants ``flavor``'s family runs
    (``Family.variants``: the registry's policies and its own ``extra_policies``, such as
    ``whole_layers`` and ``native`` on the transformers families, with each attention it
    declares), those whose policy composes with FSDP2; without a flavor, ``DEFAULT_VARIANTS``."""
    if flavor is None:
        return DEFAULT_VARIANTS
    from ac_bench.models.families import family_of
    return tuple(v for v in family_of(flavor).variants()
                 if get_policy(parse_variant(v)[0]).fsdp2_incompatibility is None)


def parse_variants(text: str | None, flavor: Flavor | None = None) -> tuple[str, ...]:
    """``none-sdpa,full-sdpa`` -> variants (``default_variants(flavor)`` when ``text`` is None); a
    policy that does not compose raises DoesNotCompose, no name or a name given twice ValueError."""
    if text is None:
        return default_variants(flavor)
    variants = tuple(v.strip() for v in text.split(",") if v.strip())
    if not variants:
        raise ValueError(f"--variants {text!r} names no variant; leave it out for every policy that composes "
                         f"with FSDP2, or list POLICY-ATTENTION names")
    twice = sorted({v for v in variants if variants.count(v) > 1})
    if twice:
        raise ValueError(f"--variants names {', '.join(twice)} twice; each variant is measured once")
    for v in variants:
        check_composes(get_policy(parse_variant(v)[0]))
    return variants


#: The command as its errors name it (``python -m ac_bench.report plan: error: ...`` likewise).
PROG = "python -m ac_bench.distributed"


class _RankParser(argparse.ArgumentParser):
    """argparse, whose usage error is one line (as the report's commands') that only local rank 0
    prints (``_refuse``): under torchrun every rank parses the same command line."""

    def error(self, message: str):
        sys.exit(_refuse(f"{message}; see {PROG} --help"))


def parser() -> argparse.ArgumentParser:
    p = _RankParser(prog=PROG, usage=f"{PROG} --nproc-per-node W [options]\n"
                                     f"       torchrun [torchrun options] -m ac_bench.distributed [options]",
                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc-per-node", type=int, default=None, metavar="W",
                   help="launch W ranks on this machine (torchrun's launcher, in this process, standalone "
                        "rendezvous) once the arguments are checked; leave it out under torchrun, which has its own")
    p.add_argument("--flavor", default=None,
                   help="the flavor; every rank steps its batch (default: tiny, or with --model-spec the first "
                        "flavor of its first family, as plan, sweep and frontier)")
    p.add_argument("--model-spec", action="append", default=[], metavar="package.module:NAME",
                   help="register a model family first (as pytest's --model-spec; repeatable), e.g. "
                        "ac_bench.models.hf:LLAMA with --flavor hf-llama-tiny")
    p.add_argument("--variants", default=None,
                   help="comma-separated POLICY-ATTENTION names (default: every policy that composes with FSDP2, "
                        "both attentions, and the flavor's family's own policies: whole_layers and native on the "
                        "transformers families)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available (NCCL), else cpu (gloo)")
    p.add_argument("--out", required=True, type=Path, help="folder for rank{R}.json, records.json, state/")
    p.add_argument("--save-state", action="store_true",
                   help="rank 0 saves each variant's full gradients and updated parameters under OUT/state/")
    return p


#: Set once ``main`` has started a process group in this process (``exit_rank``).
_process_group_started = False


def _local_rank() -> str:
    return os.environ.get("LOCAL_RANK", "0")


#: Seconds a rank other than local rank 0 waits before it exits refused: torchrun stops every
#: rank once one has exited, and rank 0, which prints the refusal, must not be stopped first.
REFUSAL_WAIT_S = 3.0


def _refuse(message: str) -> int:
    """Print ``PROG: error: message`` once per machine (local rank 0, or the process that is no
    rank); return exit status 2."""
    if _local_rank() == "0":
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    elif "RANK" in os.environ:
        time.sleep(REFUSAL_WAIT_S)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        families = [family for _, family in load_family_specs(args.model_spec)]
        if args.flavor is None:  # what the ranks are given too (rank_arguments)
            args.flavor = families[0].flavors[0].name if families else "tiny"
        flavor = get_flavor(args.flavor)
        variants = parse_variants(args.variants, flavor)
    except ValueError as exc:
        return _refuse(str(exc))
    device_type = args.device or ("cuda" if cuda_available() else "cpu")
    # Before the process group and the minutes of measuring: each rank would otherwise die
    # writing its records (an --out under a regular file, or unwritable) and lose the run.
    problems = [f"--out {args.out}: {p}" for p in [folder_problem(args.out, create=True)] if p]
    problems += [f"--variants {p}" for p in (variant_problem(flavor, v) for v in variants) if p]
    if device_type == "cuda" and not cuda_available():
        problems.append("--device cuda: torch sees no CUDA device here; leave --device out (gloo on the CPU) or "
                        "run it where a GPU is")
    if flavor.cpu_mode == "estimate" and device_type == "cpu":
        real = ", ".join(f.name for f in FLAVORS.values() if f.cpu_mode != "estimate")
        problems.append(f"flavor {flavor.name} is estimated on fake tensors on the CPU, which FSDP2's collectives "
                        f"cannot run on; choose one measured on real tensors: {real}")
    if args.nproc_per_node is not None and "RANK" in os.environ:
        problems.insert(0, "--nproc-per-node under torchrun: torchrun launched the ranks already; give it to torchrun "
                           "(torchrun --nproc-per-node W -m ac_bench.distributed ...), not to the module")
    elif args.nproc_per_node is not None and args.nproc_per_node < 1:
        problems.append(f"--nproc-per-node {args.nproc_per_node}: launch at least 1 rank")
    if problems:
        return _refuse(problems[0])
    if "RANK" not in os.environ:
        if args.nproc_per_node is not None:
            note = oversubscription_note(args.nproc_per_node, device_type, usable_cores())
            if note:
                print(f"ac_bench.distributed: note: {note}", file=sys.stderr, flush=True)
            return launch_here(args)
        return _refuse("launch the ranks: python -m ac_bench.distributed --nproc-per-node 2 --out DIR, or under "
                       "torchrun (torchrun --nproc-per-node 2 -m ac_bench.distributed --out DIR)")
    bad = [f"{k}={os.environ[k]!r}" for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")
           if k in os.environ and not os.environ[k].isdigit()]
    if bad:
        print(f"{PROG}: error: {bad[0]} is not a rank number; torchrun sets it: launch with torchrun or "
              f"--nproc-per-node, not with it set by hand", file=sys.stderr)
        return 2
    device = rank_device(device_type, int(os.environ.get("LOCAL_RANK", 0)))
    global _process_group_started
    dist.init_process_group(distributed_backend(device_type))
    _process_group_started = True
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if rank == 0 and not args.variants:
            for kind, reason in NOT_COMPOSED.items():
                print(f"ac_bench.distributed: left out, kind {kind}: {reason}")
        state_dir = args.out / "state" if args.save_state else None
        records = []
        for variant in variants:
            records.append(measure_sharded(flavor, variant, device, world_size, rank, state_dir).as_dict())
            gc.collect()  # this variant's sharded model, before the next one is built (see below)
            # After every variant, so that a launch stopped part-way (a rank out of memory, killed)
            # keeps what each rank measured before it.
            write_json_atomic(args.out / f"rank{rank}.json", records)
            if rank == 0:
                print(f"ac_bench.distributed: {variant} measured on {world_size} rank{'s' * (world_size > 1)}",
                      flush=True)
        # The sharded models of the last variants may sit in reference cycles that hold FSDP's
        # gloo work objects; freed at interpreter teardown (after the process group is gone), a
        # rank aborted there ("terminate called without an active exception", SIGABRT) twice in
        # roughly fifteen launches over two sessions. Collected here, they go while the process
        # group is alive: none of ten launches, two at a time, aborted since (2026-11-29).
        gc.collect()
        gathered = [None] * world_size if rank == 0 else None
        dist.gather_object(records, gathered, dst=0)
        if rank == 0:
            merged = sorted((r for part in gathered for r in part), key=lambda r: (r["variant"], r["rank"]))
            write_json_atomic(args.out / RECORDS_FILE, {
                "world_size": world_size, "flavor": flavor.name, "device_type": device_type,
                "not_composed": NOT_COMPOSED, "records": merged})
            print(f"ac_bench.distributed: {len(merged)} records in {args.out / RECORDS_FILE}; a table per rank: "
                  f"python -m ac_bench.report table {args.out / RECORDS_FILE}", flush=True)
            stale = stale_rank_files(args.out, world_size)
            if stale:
                print(f"ac_bench.distributed: note: {', '.join(p.name for p in stale)} in {args.out} "
                      f"{'are' if len(stale) > 1 else 'is'} from an earlier launch with more ranks, kept as "
                      f"{'they were' if len(stale) > 1 else 'it was'}; this launch's are "
                      f"{'rank0.json' if world_size == 1 else f'rank0.json to rank{world_size - 1}.json'} and "
                      f"{RECORDS_FILE}", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def oversubscription_note(ranks: int, device_type: str, cores: int) -> str | None:
    """The note for a CPU launch of more ranks than ``cores``: they share the cores, so it runs
    for about ``ranks / cores`` times as long per step and prints nothing meanwhile (64 ranks on
    2 cores were minutes of silence; the ratio to 3 significant digits: 9 ranks on 8 cores is 1.12, not 1);
    memory, FLOPs and the records are the same. None where each
    rank has a core, or on CUDA (a rank per GPU)."""
    if device_type != "cpu" or ranks <= cores:
        return None
    return (f"{ranks} ranks on {cores} CPU core{'s' * (cores > 1)}: they share them, so each step takes about "
            f"{ranks / cores:.3g} times as long as with a core each, and the first variant's line comes that much "
            f"later; the figures are the same")


def stale_rank_files(out: Path, world_size: int) -> list[Path]:
    """``rank{R}.json`` files in ``out`` with ``R >= world_size``: left by an earlier launch with
    more ranks into the same folder (never deleted: they are someone's measurements), in rank order."""
    found = []
    for path in Path(out).glob("rank*.json"):
        number = path.stem[len("rank"):]
        if number.isdigit() and int(number) >= world_size:
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def rank_arguments(args: argparse.Namespace) -> list[str]:
    """The command line each rank of ``launch_here`` gets: ``args`` less ``--nproc-per-node``."""
    argv = ["--flavor", args.flavor, "--out", str(args.out)]
    for spec in args.model_spec:
        argv += ["--model-spec", spec]
    if args.variants is not None:
        argv += ["--variants", args.variants]
    if args.device is not None:
        argv += ["--device", args.device]
    return argv + (["--save-state"] if args.save_state else [])


def launch_here(args: argparse.Namespace) -> int:
    """``torchrun --standalone --nproc-per-node W -m ac_bench.distributed ...`` through torchrun's
    own launcher (``torch.distributed.run.run``) in this process; returns the exit status: 0,
    or the failing cause's after one line naming every failed rank (``failure_line``).
    ``OMP_NUM_THREADS`` is 1 per rank where unset (what torchrun sets, without its warning)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={args.nproc_per_node}",
                                           "-m", "ac_bench.distributed", *rank_arguments(args)])
    try:
        run(config)
    except ChildFailedError as exc:
        line, status = failure_line(exc.failures, args.nproc_per_node)
        print(f"{PROG}: error: {line}", file=sys.stderr)
        return status
    return 0


def failure_line(failures: dict, world_size: int) -> tuple[str, int]:
    """What failed in a launch, as one line, and the exit status to end with, from torchrun's
    ``ChildFailedError.failures`` (global rank -> a failure with ``exitcode``, negative for a
    signal, and ``timestamp``, whole seconds). Every failed rank is named, the cause first: a rank
    ended by a signal other than SIGTERM (killed, aborted), then by the earliest exit; SIGTERM is
    what torchrun sends the others once one has failed, and a rank whose peer died fails too (a
    lost connection), often in the same second, so ``get_first_failure`` can blame the
    bystander. The status is the cause's (1 where a signal ended it)."""
    def how(code: int) -> str:
        return f"status {code}" if code >= 0 else f"signal {-code}"

    def order(item) -> tuple:
        rank, f = item
        return (not (f.exitcode < 0 and f.exitcode != -signal.SIGTERM), f.exitcode == -signal.SIGTERM,
                f.timestamp, rank)
    ranked = sorted(failures.items(), key=order)
    (rank, cause), others = ranked[0], ranked[1:]
    line = f"rank {rank} of {world_size} exited with {how(cause.exitcode)}"
    if others:
        line += "; then " + ", ".join(f"rank {r} with {how(f.exitcode)}" for r, f in others)
    line += " (the ranks' output, if any, is above)"
    return line, cause.exitcode if cause.exitcode > 0 else 1


def load_records(out: Path) -> list[Measurement]:
    """The merged records of a run (``OUT/records.json``), validated."""
    data = json.loads((Path(out) / RECORDS_FILE).read_text())
    return [Measurement.from_dict(r) for r in data["records"]]


def exit_rank(status: int) -> None:
    """End this rank's process with ``status`` (an int) without the interpreter's teardown.

    Raises nothing and does not return. gloo's worker threads outlive
    ``destroy_process_group`` while anything still holds the process group (FSDP2's device
    mesh does); a worker that lets go of a finished collective's tensors after the interpreter
    has begun finalizing takes the GIL, and the process aborts ("terminate called without an
    active exception", SIGABRT) after every record was written. Two CI runs failed so
    (2026-11-29 and 2026-11-30). ``os._exit`` after flushing skips the teardown: the records
    are already on disk (``write_json_atomic``), and nothing after them needs Python. A script
    that makes the fault on purpose dies by a signal every time through ``sys.exit`` and never
    through this (docs/distributed.md, "An abort at exit"). A rank refused before it started a process group
    exits through ``sys.exit``: its teardown is safe. Local rank 0 prints the refusal; the other
    ranks wait ``REFUSAL_WAIT_S`` before they exit (``_refuse``), as torchrun stops every rank once
    one has exited.
    """
    if not _process_group_started:  # refused before any process group: no gloo thread to outlive
        sys.exit(status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_rank() -> None:
    """``main``, ended through ``exit_rank`` also where it raises: the traceback printed, exit
    status 1, and no interpreter teardown after a process group started (which may abort)."""
    try:
        status = main()
    except Exception:
        traceback.print_exc()
        status = 1
    exit_rank(status)


if __name__ == "__main__":
    run_rank()


#: The per-rank peak of a gloo run depends on when collectives complete: a buffer freed on
#: gloo's thread before or after the next allocation. Measured at tiny: 1.5 KiB between runs
#: and ranks on a quiet machine, 41728 B (0.8 of a block's 50816) under pytest-xdist with other
#: jobs on the cores; the optimizer step's peak moved by exactly one block (50816 B: an all-gather
#: output still alive during the step) between rank 0 and rank 1 in a clean-clone run of
#: ``make test`` (2026-11-29); the breakdown at the peak of a whole launch moved once in CI
#: (2026-11-30). Since then the launch waits for gloo's thread to release each collective's
#: buffers (``release_in_program_order``), which removes that cause, not every one: in four
#: launches of a fresh clone the optimizer step's peak still moved by one block in 3 of 160
#: records (2026-11-30). So peaks are still compared within one block's FSDP buffers
#: (``compare_sharded``, bound ``fsdp_unsharded_peak_bytes``); every other figure is equal on
#: every rank and gated at the registry's tolerance.
PEAK_METRICS = ("peak_bytes", "activation_peak_bytes", "optimizer_step_peak_bytes")


def compare_sharded(record: Measurement, entry: dict, tolerances: dict, fix: str) -> list[str]:
    """The sharded gate's rule (``ac_bench.gate.baselines.compare``'s signature): each peak of
    ``PEAK_METRICS`` within one block's FSDP buffers (``fsdp_unsharded_peak_bytes``, bytes) of the
    baseline entry, every other metric at ``tolerances``; one message per figure that moved."""
    from ac_bench.analytic import Shape, fsdp_unsharded_peak_bytes
    from ac_bench.gate.baselines import compare

    bound = fsdp_unsharded_peak_bytes(Shape.of_record(record), record.world_size)
    moved = {k: getattr(record, k) - entry[k] for k in PEAK_METRICS if isinstance(entry.get(k), int)}
    problems = [f"{record.case_id}: {k} moved {d:+,} B from the baseline {entry[k]:,}, more than one block's FSDP "
                f"buffers ({bound:,} B). If intended, accept it with: {fix}"
                for k, d in moved.items() if abs(d) > bound]
    steady = dataclasses.replace(record, **{k: entry[k] for k in moved})
    return problems + compare(steady, entry, tolerances, fix=fix)


def torchrun_command(*args: str) -> list[str]:
    """``torchrun`` of this interpreter's environment (``python -m torch.distributed.run``)."""
    return [sys.executable, "-m", "torch.distributed.run", *args]


def launch_env() -> dict[str, str]:
    """The environment of a local launch: one thread per rank (the ranks share the cores), and
    Python's fault handler on, so that a rank killed by a signal prints where it was."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def launch_failure(returncode: int, seconds: float, stdout: str, stderr: str) -> str:
    """The message of a failed local launch: exit status, how far it got, the end of stderr.

    A rank that dies by a signal (SIGABRT) prints the Python stack of every thread
    (``PYTHONFAULTHANDLER``, set by ``launch_env``) before torchrun's own report."""
    done = [line for line in stdout.splitlines() if " measured on " in line]
    reached = f"the last variant measured: {done[-1].split(': ', 1)[-1]}" if done else "no variant was measured"
    return f"torchrun exited {returncode} after {seconds:.1f}s ({reached}):\n{stderr[-4000:]}"
