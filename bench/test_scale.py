"""Per-rank memory at any scale, estimated in one process (``ac_bench.scale``: the fake process
group, fake tensors, FSDP2, FSDPMemTracker): equal to a real launch at world size 4, the
per-rank analytic model at world sizes up to 1024, exact extrapolation in the number of layers,
and Llama-3-8B at world size 64 (transformers' LlamaForCausalLM, the real step) gated against
the baselines. World size 2 is compared in ``bench/test_distributed.py`` against its launch.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time

import pytest

from ac_bench.analytic import (
    Shape,
    fsdp_unsharded_peak_bytes,
    kept_bytes,
    not_modelled_reason,
    optimizer_step_counter_bytes,
    sharded_parameter_bytes,
    sharded_resident_bytes,
    step_flops,
)
from ac_bench.distributed import launch_env, launch_failure, load_records, torchrun_command
from ac_bench.models import get_flavor, get_policy
from ac_bench.plugin.session import gate_record
from ac_bench.scale import (
    NotAffine,
    ShardedSetup,
    at,
    estimate,
    estimate_rank,
    extrapolate,
    extrapolation_depths,
    launch_differences,
)

pytestmark = pytest.mark.distributed

TINY = get_flavor("tiny")
#: The variants launched on 4 ranks (a launch of every variant takes ~1 min on 2 cores): the
#: baseline, full, a periodic policy, per-op saving, both attentions.
W4_VARIANTS = ("none-eager", "full-sdpa", "every_other-sdpa", "sac-sdpa")
NO_MP = dict(mp_param_dtype=None, mp_reduce_dtype=None)


@pytest.fixture(autouse=True)
def _suite_models_only(suite_models):
    """The suite's own models and Llama 3: skipped in a run only about --model-spec families."""


@pytest.fixture(scope="module")
def launch_w4(tmp_path_factory, session_device):
    """``torchrun --nproc-per-node 4 -m ac_bench.distributed`` at tiny: records by (variant, rank)."""
    if session_device != "cpu":
        pytest.skip("the launch the estimate is compared with runs on the CPU (gloo) only")
    out = tmp_path_factory.mktemp("fsdp-w4")
    start = time.perf_counter()
    result = subprocess.run(
        torchrun_command("--standalone", "--nproc-per-node=4", "-m", "ac_bench.distributed", "--flavor", TINY.name,
                         "--device", "cpu", "--out", str(out), "--variants", ",".join(W4_VARIANTS)),
        env=launch_env(), capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(launch_failure(result.returncode, time.perf_counter() - start, result.stdout, result.stderr),
                    pytrace=False)
    return {(r.variant, r.rank): r for r in load_records(out)}


@pytest.mark.parametrize("variant", [pytest.param(v, id=f"cpu-tiny-w4-{v}") for v in W4_VARIANTS])
def test_the_estimate_equals_the_launch_at_world_size_4(launch_w4, variant):
    """Every rank of the 4-rank gloo launch against the one-process estimate of rank 0."""
    estimate = estimate_rank(TINY, variant, ShardedSetup(4, **NO_MP))
    problems = [p for rank in range(4) for p in launch_differences(estimate, launch_w4[(variant, rank)])]
    assert problems == [], "\n".join(problems)


#: World size 1024 takes ~4.5 s a case (FSDP2 splits every all-gather into 1024 views), 8 and 64 ~1 s.
ANALYTIC_CASES = [("tiny", 8, "none"), ("tiny", 8, "full"), ("tiny", 1024, "none"), ("llama-small", 64, "none"),
                  ("llama-small", 64, "full")]


@pytest.mark.parametrize("flavor,world_size,policy", [pytest.param(f, w, p, id=f"cpu-{f}-w{w}-{p}-sdpa")
                                                      for f, w, p in ANALYTIC_CASES])
def test_the_per_rank_analytic_model_holds_at_every_world_size(flavor, world_size, policy):
    """Estimated rank 0 against ``ac_bench.analytic``'s per-rank model, exactly: resident state
    (1/W of parameters, gradients and AdamW's moments, each dim 0 padded to a multiple of W, plus
    the step counters and the input), the shard and the optimizer state at the peak, FSDP's
    unsharded block and all-gather buffer, the kept bytes and the FLOPs. World size 1024 at
    tiny gives every rank one row of each parameter, most of it padding."""
    fl = get_flavor(flavor)
    reason = not_modelled_reason(fl, policy)
    if reason:
        pytest.skip(reason)
    record = estimate_rank(fl, f"{policy}-sdpa", ShardedSetup(world_size, **NO_MP))
    shape = Shape.of_record(record)
    shard = sharded_parameter_bytes(shape, world_size)
    peak = record.breakdown
    pairs = {
        "resident_bytes": (record.resident_bytes, sharded_resident_bytes(shape, world_size, "sdpa")),
        "parameters at the peak": (peak["parameters"], shard),
        "optimizer_state at the peak": (peak["optimizer_state"], 2 * shard + optimizer_step_counter_bytes(shape)),
        "unsharded_parameters at the peak": (peak["unsharded_parameters"],
                                             fsdp_unsharded_peak_bytes(shape, world_size)),
        "forward_kept_bytes": (record.forward_kept_bytes, kept_bytes(shape, policy, "sdpa")),
        "flops": (record.flops, step_flops(shape, policy, "sdpa")),
    }
    wrong = {k: v for k, v in pairs.items() if v[0] != v[1]}
    assert wrong == {}, f"{flavor} {policy}-sdpa at world size {world_size}: (measured, model) {wrong}"


@pytest.fixture(scope="module")
def llama3_8b():
    pytest.importorskip("transformers", reason="Llama 3 is transformers' LlamaForCausalLM: pip install -e '.[hf]'")
    from ac_bench.scale import scale_model
    return scale_model("llama3-8b")


@pytest.mark.parametrize("policy", [pytest.param("none", marks=[pytest.mark.slow, pytest.mark.deep]), "every_3"])
def test_extrapolation_in_depth_equals_a_trace_of_every_layer(llama3_8b, policy):
    """At Llama-3-8B's width (mixed precision, world size 64), the record extrapolated to 11
    layers from three depths equals the trace of all 11 layers in every figure (bytes, FLOPs,
    ops, the breakdown, FLOPs by op): per-rank memory is affine in the number of layers for the
    policy, measured, not assumed. ``none`` steps from depths 2, 3, 4; ``every_3`` by its
    period, 2, 5, 8."""
    variant = f"{policy}-sdpa"
    setup = ShardedSetup(64)
    flavor = at(llama3_8b, depth=11)
    depths = extrapolation_depths(get_policy(policy), 11)
    made = extrapolate(tuple(estimate_rank(at(llama3_8b, depth=d), variant, setup) for d in depths), 11)
    traced = estimate_rank(flavor, variant, setup)
    assert made.sharding["extrapolated_from_depths"] == list(depths) and depths[-1] < 11, \
        f"{variant}: extrapolated from depths {made.sharding['extrapolated_from_depths']}, not {list(depths)} below 11"
    differ = {k: (v, getattr(traced, k)) for k, v in dataclasses.asdict(made).items()
              if k != "sharding" and v != getattr(traced, k)}
    assert differ == {}, f"{variant}: extrapolated to 11 layers against traced (extrapolated, traced): {differ}"


def test_a_figure_that_is_not_affine_in_depth_is_not_extrapolated():
    """Depths 1, 2, 3 of ``full`` (which leaves layer 0 alone, so the first step differs):
    NotAffine names the figure and its three values, and says how to get the figure instead."""
    setup = ShardedSetup(2, **NO_MP)
    records = tuple(estimate_rank(at(TINY, depth=d), "full-sdpa", setup) for d in (1, 2, 3))
    with pytest.raises(NotAffine, match=r"full-sdpa at world size 2: .* depths 1, 2, 3 .*estimate it at full depth "
                                        r"\(--full-depth\)"):
        extrapolate(records, 5)


def scale_policy_ids():
    from ac_bench.models import POLICIES
    from ac_bench.scale import OFFLOADING_POLICY
    names = [p for p in (*POLICIES, "whole_layers", "native", OFFLOADING_POLICY)
             if get_policy(p).kind not in ("offload", "compile_budget", "sequential")]
    # The default run gates two (~4 s each); --slow (make test) full, sac and the libraries'
    # offloading too; the rest deep.
    fast, slow = ("none", "whole_layers"), ("full", "sac", OFFLOADING_POLICY)
    return [pytest.param(p, id=f"cpu-llama3-8b-w64-{p}-sdpa",
                         marks=() if p in fast else [pytest.mark.slow] if p in slow else [pytest.mark.slow, pytest.mark.deep])
            for p in names]


@pytest.mark.parametrize("policy", scale_policy_ids())
def test_llama3_8b_at_world_size_64_matches_baseline(llama3_8b, policy, baseline_gate, update_baselines, measurements):
    """Llama-3-8B (32 layers, transformers' model and loss, sequence 8192, per-rank batch 1,
    float32 parameters with bfloat16 compute and float32 reduction) on rank 0 of 64, extrapolated
    from three depths, against ``llama3-8b-w64-{variant}`` in the baselines: a PyTorch or
    transformers upgrade that changes FSDP2's or a policy's per-rank memory fails here.
    ``whole_layers_offload`` is estimated with the simulated host (``offloaded_bytes``: each
    layer's input, 32 x 8192 x 4096 x 2 B = 2 GiB per rank, gated like every figure)."""
    from ac_bench.scale import scale_policies
    if policy not in scale_policies(llama3_8b, offload=True):
        pytest.skip(f"{policy} is not estimated for {llama3_8b.family}")
    record = estimate(llama3_8b, f"{policy}-sdpa", ShardedSetup(64))
    assert record.depth == 32 and record.sharding["extrapolated_from_depths"], record.sharding
    measurements.add_sharded(record)
    gate_record(record, baseline_gate, update_baselines)


#: The larger shapes gated with --slow (each estimate about 5 s at 70B over 256 ranks and 10 s
#: at 405B, 2 cores): no checkpointing and the libraries' whole layers at 70B over 256 ranks,
#: whole layers at 405B over 256 (what fits there), and the second family at scale, Qwen3
#: (transformers' Qwen3ForCausalLM): whole layers at 8B over 64 ranks (``make test`` runs it:
#: not deep) and at 14B over 256.
LARGE_GATES = [("llama3-70b", 256, "none", True), ("llama3-70b", 256, "whole_layers", True),
               ("llama3-405b", 256, "whole_layers", True), ("qwen3-8b", 64, "whole_layers", False),
               ("qwen3-14b", 256, "whole_layers", True)]


@pytest.mark.slow
@pytest.mark.parametrize("model,world_size,policy", [
    pytest.param(m, w, p, id=f"cpu-{m}-w{w}-{p}-sdpa", marks=[pytest.mark.deep] if deep else [])
    for m, w, p, deep in LARGE_GATES])
def test_larger_shapes_match_baseline(llama3_8b, model, world_size, policy, baseline_gate, update_baselines,
                                      measurements):
    """Llama-3-70B and 405B and Qwen3-8B and 14B (the setup of the Llama-3-8B gate),
    extrapolated in depth, against ``{model}-w{W}-{variant}`` in the baselines."""
    from ac_bench.scale import ScaleError, scale_model
    try:
        flavor = scale_model(model)
    except ScaleError as exc:
        pytest.skip(str(exc))
    record = estimate(flavor, f"{policy}-sdpa", ShardedSetup(world_size))
    assert record.depth == flavor.depth and record.sharding["extrapolated_from_depths"], record.sharding
    measurements.add_sharded(record)
    gate_record(record, baseline_gate, update_baselines)
