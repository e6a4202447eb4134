"""Checkpointing under FSDP2 at world size 2 (gloo on the CPU): per-rank records, gradients
against the single process and across policies, the per-rank analytic model, the baselines.

One ``python -m ac_bench.distributed --nproc-per-node 2`` (torchrun's launcher, standalone) per
session (a session fixture; every test reads its records), at ``tiny`` whatever ``--flavor`` says: world size 2
on 2 CPU cores is two processes stepping at once, and ``tiny`` keeps the default run in its
budget. The variants are every policy that composes with FSDP2, both attentions
(``ac_bench.distributed.DEFAULT_VARIANTS``); ``budget_B`` is left out with its reason.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ac_bench.analytic import (
    CHANGE_WITH_THE_POLICY,
    Shape,
    fsdp_unsharded_peak_bytes,
    kept_bytes,
    not_modelled_reason,
    optimizer_step_counter_bytes,
    sharded_parameter_bytes,
    sharded_resident_bytes,
    step_flops,
)
from ac_bench.distributed import (
    DEFAULT_VARIANTS,
    NOT_COMPOSED,
    PEAK_METRICS,
    compare_sharded,
    global_flavor,
    launch_env,
    launch_failure,
    load_records,
    parameter_name,
)
from ac_bench.distributed import main as distributed_main
from ac_bench.gate.baselines import entry_of
from ac_bench.gradients import SHARDED_TOLERANCES, StepResult, mismatches
from ac_bench.metrics import DEFAULT_TOLERANCES
from ac_bench.models import ATTENTIONS, get_flavor, parse_variant
from ac_bench.plugin.session import gate_record
from ac_bench.record import Measurement, build_training, measure_variant

FLAVOR = get_flavor("tiny")
WORLD_SIZE = 2
LAUNCH_TIMEOUT_S = 300

RANK_TIMING_DEPENDENT = {*PEAK_METRICS, "step_seconds", "breakdown"}

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="session")
def sharded_run(tmp_path_factory, session_device, suite_models, measurements):
    """The world-size-2 run: its merged records by (variant, rank), the state folder, stdout.
    Every rank's record also goes into the session's ``--benchmark-json`` (``measurements``)."""
    if session_device != "cpu":
        pytest.skip("the sharded benchmark is asserted on the CPU (gloo) only; on GPUs run "
                    "`python -m ac_bench.distributed --nproc-per-node N --device cuda --out DIR` (NCCL), whose "
                    "figures this suite does not yet assert")
    out = tmp_path_factory.mktemp("fsdp-w2")
    start = time.perf_counter()
    result = subprocess.run(
        # The module's own launcher: torchrun's (standalone rendezvous), after checking the arguments once.
        [sys.executable, "-m", "ac_bench.distributed", f"--nproc-per-node={WORLD_SIZE}",
         "--flavor", FLAVOR.name, "--device", "cpu", "--out", str(out), "--save-state"],
        env=launch_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        pytest.fail(launch_failure(result.returncode, seconds, result.stdout, result.stderr), pytrace=False)
    records = {(r.variant, r.rank): r for r in load_records(out)}
    for record in records.values():
        measurements.add_sharded(record)
    return records, out / "state", result.stdout, seconds


@functools.lru_cache(maxsize=None)
def single_process(variant: str) -> Measurement:
    """The same variant in one process at the per-rank batch (what sharding is compared with)."""
    return measure_variant(FLAVOR, variant, "cpu")


def per_rank_shape(record: Measurement) -> Shape:
    return Shape.of_record(record)


variants = pytest.mark.parametrize("variant", [pytest.param(v, id=f"cpu-{FLAVOR.name}-w{WORLD_SIZE}-{v}")
                                               for v in DEFAULT_VARIANTS])


@variants
def test_every_rank_writes_a_record(sharded_run, variant):
    """Each rank's record: world size, rank, per-rank and global batch, FSDPMemTracker, step time;
    read back through the record's validation; every deterministic figure equal across ranks."""
    records, _, stdout, _ = sharded_run
    ranks = [records[(variant, r)] for r in range(WORLD_SIZE)]
    for rank, record in enumerate(ranks):
        where = f"{variant} rank {rank}"
        assert Measurement.from_dict(record.as_dict()) == record, f"{where}: the record does not read back equal"
        shape = (record.world_size, record.rank, record.batch, record.global_batch)
        assert shape == (WORLD_SIZE, rank, FLAVOR.batch, WORLD_SIZE * FLAVOR.batch), \
            f"{where}: (world_size, rank, batch, global_batch) is {shape}"
        assert (record.memory_method, record.device_key) == ("fsdp-memtracker", "cpu"), \
            f"{where}: measured by {record.memory_method} on {record.device_key}"
        assert record.step_seconds is not None and record.step_seconds > 0, \
            f"{where}: step_seconds is {record.step_seconds!r}"
        assert record.case_id == f"{FLAVOR.name}-w{WORLD_SIZE}-{variant}", f"{where}: case id {record.case_id}"
    first = ranks[0].as_dict()
    for other in ranks[1:]:
        data = other.as_dict()
        differ = sorted(k for k in data if k not in RANK_TIMING_DEPENDENT | {"rank"} and data[k] != first[k])
        assert differ == [], f"{variant}: rank {other.rank} differs from rank 0 in {differ}"
        bound = fsdp_unsharded_peak_bytes(per_rank_shape(other))
        for k in PEAK_METRICS:
            assert abs(data[k] - first[k]) <= bound, \
                f"{variant}: rank {other.rank}'s {k} {data[k]:,} is more than {bound:,} B from rank 0's {first[k]:,}"


def test_policies_that_do_not_compose_are_left_out_with_the_reason(sharded_run):
    """The default run prints why each left-out kind is not run."""
    _, _, stdout, _ = sharded_run
    for kind, reason in NOT_COMPOSED.items():
        assert f"left out, kind {kind}: {reason}" in stdout, f"the run's output does not say why {kind} is left out"

def test_asking_for_a_policy_that_does_not_compose_is_a_one_line_error(capsys, tmp_path):
    """Refused before any process group starts (so also without torchrun), exit status 2."""
    status = distributed_main(["--variants", "none-sdpa,budget_0.5-sdpa", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2, f"budget_0.5 under FSDP2: exit status {status}, not 2 ({err!r})"
    assert err.startswith("python -m ac_bench.distributed: error: policy 'budget_0.5' (kind compile_budget) is not run under FSDP2: "), \
        f"budget_0.5 under FSDP2: the error does not name the policy and its kind: {err!r}"
    assert len(err.strip().splitlines()) == 1, f"budget_0.5 under FSDP2: the error is not one line: {err!r}"
    assert not list(tmp_path.iterdir()), f"budget_0.5 under FSDP2: the refused run wrote {list(tmp_path.iterdir())}"


def _sharded_state(state_dir: Path, variant: str) -> dict:
    return torch.load(state_dir / f"{variant}.pt")


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_sharded_gradients_match_the_single_process_run_of_the_global_batch(sharded_run, attention):
    """The full gradients of the first sharded step against one process stepping the global
    batch (same weights, same samples) within ``SHARDED_TOLERANCES`` (the reduction sums in
    another order); the parameters after AdamW's first step within 2 * lr: that step moves each
    parameter by lr * g / (|g| + eps), at most lr, and for a gradient near eps a last-ulp
    difference can move it anywhere in that range, so only the bound is stated."""
    _, state_dir, _, _ = sharded_run
    sharded = _sharded_state(state_dir, f"none-{attention}")
    training = build_training(global_flavor(FLAVOR, WORLD_SIZE), f"none-{attention}", "cpu")
    training.step()
    grads = {parameter_name(n): p.grad.detach() for n, p in training.model.named_parameters()}
    params = {parameter_name(n): p.detach() for n, p in training.model.named_parameters()}
    assert set(sharded["grads"]) == set(grads), \
        f"none-{attention}: sharded and single-process parameter names differ: {set(sharded['grads']) ^ set(grads)}"
    dtype = next(iter(grads.values())).dtype
    empty = torch.zeros(())
    expected, actual = StepResult(empty, empty, grads), StepResult(empty, empty, sharded["grads"])
    bad = mismatches(expected, actual, **SHARDED_TOLERANCES[dtype])
    assert bad == [], f"none-{attention}: sharded gradients outside {SHARDED_TOLERANCES[dtype]} of one process: {bad}"
    lr = training.optimizer.defaults["lr"]
    moved = {n: (sharded["params"][n] - params[n]).abs().max().item() for n in params}
    assert max(moved.values()) <= 2 * lr, f"none-{attention}: parameters after the step moved more than 2 * lr: {moved}"


@variants
def test_every_policy_trains_bitwise_like_sharded_no_checkpointing(sharded_run, variant):
    """Under FSDP2 a policy changes what is kept, not the math: each rank recomputes the same ops
    on the same shard and the reduction adds the same per-rank gradients in the same order, so
    the full gradients and the updated parameters are bitwise those of ``none`` (also sharded).
    (Against the single process they are not bitwise: see the test above.)"""
    _, state_dir, _, _ = sharded_run
    policy, attention = parse_variant(variant)
    reference = _sharded_state(state_dir, f"none-{attention}")
    state = _sharded_state(state_dir, variant)
    for kind in ("grads", "params"):
        differ = [n for n in reference[kind] if not torch.equal(reference[kind][n], state[kind][n])]
        assert differ == [], f"{variant}: {kind} not bitwise equal to none-{attention} for {differ}"


@variants
def test_per_rank_memory_and_flops_match_the_analytic_model(sharded_run, variant):
    """Per rank (FSDPMemTracker counts storages exactly, so exact): the resident state is 1/W of
    parameters, gradients and both AdamW moments plus the step counters and the rank's input;
    at the peak FSDP holds one block unsharded beside its all-gather buffer; what the policy
    keeps and the FLOPs are the single process's at the per-rank batch (the analytic model's
    kept bytes and step FLOPs); and the per-rank peak is below the single process's."""
    records, _, _, _ = sharded_run
    record = records[(variant, 0)]
    policy, attention = parse_variant(variant)
    reason = not_modelled_reason(FLAVOR, policy)
    if reason:
        pytest.skip(reason)
    shape = per_rank_shape(record)
    def exact(name: str, measured: int, model: int) -> None:
        assert measured == model, (f"{FLAVOR.name} {variant} rank 0: {name} measured {measured:,}, the per-rank model "
                                   f"says {model:,}. {CHANGE_WITH_THE_POLICY}")

    exact("resident_bytes", record.resident_bytes, sharded_resident_bytes(shape, WORLD_SIZE))
    shard = sharded_parameter_bytes(shape, WORLD_SIZE)
    exact("W x the parameter shard (tiny: W divides every dim 0)", shard * WORLD_SIZE, sharded_parameter_bytes(shape, 1))
    peak = record.breakdown
    exact("parameters at the peak", peak["parameters"], shard)
    exact("optimizer_state at the peak", peak["optimizer_state"], 2 * shard + optimizer_step_counter_bytes(shape))
    exact("unsharded_parameters at the peak", peak["unsharded_parameters"], fsdp_unsharded_peak_bytes(shape))
    exact("all_gather at the peak", peak["all_gather"], fsdp_unsharded_peak_bytes(shape))
    exact("forward_kept_bytes", record.forward_kept_bytes, kept_bytes(shape, policy, attention))
    if record.saved_bytes is not None:
        exact("saved_bytes against forward_kept_bytes", record.saved_bytes, record.forward_kept_bytes)
    exact("flops", record.flops, step_flops(shape, policy, attention))


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_sharding_lowers_the_per_rank_peak_below_the_single_process(sharded_run, attention):
    """Against one process stepping the per-rank batch (``none``; measured, about 4 s each):
    the same kept bytes and FLOPs, resident state lower by exactly (W-1)/W of parameters,
    gradients and AdamW's moments, and a lower peak despite FSDP's unsharded block and buffers."""
    records, _, _, _ = sharded_run
    variant = f"none-{attention}"
    record, one = records[(variant, 0)], single_process(variant)
    shape = per_rank_shape(record)
    pair = ((record.forward_kept_bytes, record.flops), (one.forward_kept_bytes, one.flops))
    assert pair[0] == pair[1], f"{variant}: (kept bytes, FLOPs) sharded {pair[0]}, one process {pair[1]}"
    assert one.resident_bytes == sharded_resident_bytes(shape, 1), \
        f"{variant}: one process's resident_bytes {one.resident_bytes:,} is not the model's {sharded_resident_bytes(shape, 1):,}"
    saved = one.resident_bytes - record.resident_bytes
    expected = 4 * (sharded_parameter_bytes(shape, 1) - sharded_parameter_bytes(shape, WORLD_SIZE))
    assert saved == expected, f"{variant}: sharding lowered resident_bytes by {saved:,}, not (W-1)/W of 4 states = {expected:,}"
    assert record.peak_bytes < one.peak_bytes, \
        f"{variant}: the per-rank peak {record.peak_bytes:,} is not below one process's {one.peak_bytes:,}"


@variants
def test_sharded_figures_match_baseline(sharded_run, variant, baseline_gate, update_baselines):
    """Rank 0's figures against ``{flavor}-w2-{variant}`` in this device's baselines file: the
    peaks within one block's FSDP buffers of the baseline (``PEAK_METRICS``), the rest at the
    registry's tolerances."""
    records, _, _, _ = sharded_run
    gate_record(records[(variant, 0)], baseline_gate, update_baselines, rule=compare_sharded)


def test_the_sharded_gate_bounds_the_peaks_by_one_block_and_the_rest_by_the_tolerances(sharded_run):
    """``compare_sharded`` on rank 0's ``full-sdpa`` against entries made from it: a peak that
    moved by one block's FSDP buffers passes, one byte more fails with the accept command, and
    a figure that is not a peak fails beyond the registry's tolerance."""
    records, _, _, _ = sharded_run
    record = records[("full-sdpa", 0)]
    bound = fsdp_unsharded_peak_bytes(per_rank_shape(record))
    fix = "pytest bench/ ... --update-baselines -k tiny-w2-full-sdpa"
    base = entry_of(record)

    def problems(**moved):
        return compare_sharded(record, {**base, **{k: base[k] + d for k, d in moved.items()}}, DEFAULT_TOLERANCES, fix)

    assert problems() == [], f"full-sdpa against its own figures: {problems()}"
    for peak in PEAK_METRICS:
        assert problems(**{peak: bound}) == [], f"{peak} moved by one block ({bound} B) should pass"
        found = problems(**{peak: -(bound + 1)})
        assert len(found) == 1 and peak in found[0] and fix in found[0], f"{peak} moved by {bound + 1} B: {found}"
    found = problems(forward_kept_bytes=base["forward_kept_bytes"] // 10)
    assert len(found) == 1 and "forward_kept_bytes" in found[0], f"forward_kept_bytes moved by 10%: {found}"


@functools.lru_cache(maxsize=None)
def estimated(variant: str, world_size: int) -> Measurement:
    """Rank 0 of ``world_size`` estimated in this process (``ac_bench.scale``: fake process group,
    fake tensors), set up as the launch is (no mixed precision, FSDP2's defaults)."""
    from ac_bench.scale import ShardedSetup, estimate_rank
    return estimate_rank(FLAVOR, variant, ShardedSetup(world_size, mp_param_dtype=None, mp_reduce_dtype=None))


@variants
def test_the_estimate_equals_the_launch(sharded_run, variant):
    """The one-process estimate of a rank (``ac_bench.scale.estimate_rank``, about 1 s at tiny)
    against each rank of the real gloo launch: every figure equal, the peaks within one block's
    FSDP buffers above the estimate (``ac_bench.scale.launch_differences``)."""
    records, _, _, _ = sharded_run
    from ac_bench.scale import launch_differences
    estimate = estimated(variant, WORLD_SIZE)
    assert estimate.memory_method == "fake-fsdp-memtracker" and estimate.sharding["world_size"] == WORLD_SIZE, \
        f"{variant}: the estimate is {estimate.memory_method} at world size {estimate.sharding['world_size']}"
    problems = [p for rank in range(WORLD_SIZE) for p in launch_differences(estimate, records[(variant, rank)])]
    assert problems == [], "\n".join(problems)
