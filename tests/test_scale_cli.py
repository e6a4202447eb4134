"""The plan at scale (``python -m ac_bench.report plan --model M --world-size W``) and the
estimate's inputs: bad input is one line, a budget nothing fits says the smallest memory and
world size that do, and the printed plan is the cheapest policy that fits."""

from __future__ import annotations

import dataclasses

import pytest

from ac_bench import scale
from ac_bench.cli.report import main as report_main
from ac_bench.models import get_flavor
from ac_bench.outputs import gib_at_least, gib_text
from ac_bench.scale import (
    GIB,
    ScaleError,
    ShardedSetup,
    at,
    estimate_rank,
    extrapolation_depths,
    nothing_fits_line,
    plan_at_scale,
    plan_lines,
)

NO_MP = dict(mp_param_dtype=None, mp_reduce_dtype=None)


def one_line_error(capsys, argv: list[str]) -> str:
    try:
        status = report_main(argv)
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2, f"{argv}: exit status {status}, not 2 ({err!r})"
    assert len(err.strip().splitlines()) == 1, f"{argv}: not one line: {err!r}"
    return err


@pytest.mark.parametrize("argv,expected", [
    (["plan", "--model", "llama3-8b", "--budget-gib", "80"], "planning at scale needs --world-size"),
    (["plan", "--world-size", "8", "--budget-gib", "80"], "planning at scale needs a model: --model (one of llama3-8b"),
    (["plan", "--model", "llama3-8b", "--flavor", "tiny", "--world-size", "8", "--budget-gib", "80"],
     "for your own family give --model-spec and --flavor instead, not both"),
    (["plan", "--model", "llama3-8b", "--world-size", "0", "--budget-gib", "80"], "--world-size"),
    (["plan", "--model", "llama3-1t", "--world-size", "8", "--budget-gib", "80"], "--model"),
    (["plan", "--model", "llama3-8b", "--world-size", "8", "--budget-gib", "80", "--seq-len", "-5"], "--seq-len"),
    (["plan", "--model", "llama3-8b", "--world-size", "8", "--budget-gib", "80", "--plot", "x.png"], "--plot"),
    (["scale", "--out", "/dev/null/x"], "--out /dev/null/x"),
    # An option this kind of plan would ignore is refused, not silently dropped.
    (["plan", "--flavor", "tiny", "--world-size", "8", "--budget-gib", "1", "--space", "blocks"],
     "--space blocks has no effect at scale (--world-size)"),
    (["plan", "--flavor", "tiny", "--world-size", "8", "--budget-gib", "1", "--offload-cost", "h200", "--host-gib", "1"],
     "--host-gib is for --space blocks on one GPU; at scale the table gives each policy's host memory per rank"),
    (["plan", "--flavor", "tiny", "--budget-gib", "1", "--mixed-precision", "none"],
     "--mixed-precision is for planning at scale: add --world-size, or leave it out"),
    (["plan", "--flavor", "tiny", "--budget-gib", "1", "--full-depth"], "--full-depth is for planning at scale"),
    (["plan", "--flavor", "tiny", "--budget-gib", "1", "--compile-budgets", "0.5"],
     "--compile-budgets sets the compiler sweep that --plot draws: add --plot, or leave it out"),
    (["plan", "--flavor", "tiny", "--budget-gib", "1e300"], "the budget must be at most 1048576 GiB, got '1e300'"),
    # 0 bytes once converted, and a world the estimate cannot trace: a traceback and a MemoryError before.
    (["plan", "--flavor", "tiny", "--budget-gib", "1e-300"], "the budget must be at least one byte (9.31e-10 GiB)"),
    (["plan", "--model", "llama3-8b", "--world-size", "100000000", "--budget-gib", "80"],
     "world size 100000000: the estimate takes at most 16384 ranks"),
    (["scale", "--out", "/tmp", "--world-sizes", "8,16385"], "world size 16385: the estimate takes at most 16384 ranks"),
])
def test_bad_input_is_one_line(capsys, argv, expected):
    assert expected in one_line_error(capsys, argv)


@pytest.mark.parametrize("kwargs,expected", [
    (dict(world_size=0), "world size 0"), (dict(world_size=2.5), "world size 2.5"),
    (dict(world_size=2, mp_param_dtype="fp8"), "mixed-precision param dtype 'fp8'"),
    (dict(world_size=16385), "world size 16385: the estimate takes at most 16384 ranks"),
])
def test_a_bad_setup_names_the_value(kwargs, expected):
    with pytest.raises(ScaleError, match=expected):
        ShardedSetup(**kwargs)


def test_the_plan_is_the_cheapest_policy_that_fits_and_nothing_fitting_names_a_world_size(monkeypatch):
    """At tiny over 2 ranks (no mixed precision): with a budget between ``full``'s and ``none``'s
    peak the plan is ``full`` (the only one that fits, more FLOPs than none); with a budget under
    every peak at 2 ranks that the lowest policy meets at 8 ranks, the line names the smallest
    feasible memory at 2 and world size 4 or 8 (whichever is the first that fits, measured here);
    a budget under the lowest peak even at the largest world size is estimated there alone, once,
    and the line gives that peak (it doubled through every world size before: 1m50s at 8B)."""
    tiny = get_flavor("tiny")
    plan = plan_at_scale(tiny, ShardedSetup(2, **NO_MP), 0, policies=("none", "full"))
    none, full = plan.records["none"].peak_bytes, plan.records["full"].peak_bytes
    assert full < none, (full, none)
    plan.budget_bytes = (full + none) // 2
    assert plan.chosen == "full" and plan.fitting() == ["full"]
    plan.budget_bytes = none
    assert plan.chosen == "none", "with both fitting, the one that recomputes nothing"
    # The table's unit is the largest its peaks fill (tiny's peaks were all "0.00 GiB" before).
    unit = "MiB" if none >= 2 ** 20 else "KiB"
    text = "\n".join(plan_lines(plan))
    assert f"| policy | per-rank peak {unit} (the smallest GPU it fits) | fits {gib_text(none)} GiB |" in text, text
    assert f"| none | {none / 2 ** (20 if unit == 'MiB' else 10):.2f} | yes |" in text, text
    # A margin under the H200's excess over the estimate is called thin, with what that excess would need.
    assert plan_lines(plan)[2].endswith(
        f"; the margin is thin, 0.0% of the peak: on an H200 peaks came out up to 19% above the estimate, which here "
        f"would be {gib_at_least(int(none * 1.19), 2)} GiB (docs/scale.md#what-the-estimate-does-not-count)"), \
        plan_lines(plan)[2]
    plan.budget_bytes = int(none * 1.19) + 1
    assert "thin" not in plan_lines(plan)[2], plan_lines(plan)[2]
    plan.budget_bytes = none
    w4 = estimate_rank(tiny, "full-sdpa", ShardedSetup(4, **NO_MP)).peak_bytes
    w8 = estimate_rank(tiny, "full-sdpa", ShardedSetup(8, **NO_MP)).peak_bytes
    assert w8 < w4 < full, (full, w4, w8)
    plan.budget_bytes = w8
    line = nothing_fits_line(plan, max_world_size=8)
    assert line == (f"nothing fits {gib_text(w8)} GiB per GPU for tiny at world size 2: the smallest feasible is "
                    f"{gib_at_least(full, 2)} GiB (full), or full at world size 8 ({w8 / GIB:.2f} GiB per rank)"), line
    plan.budget_bytes = w8 - 1
    estimated, real_estimate = [], scale.estimate
    monkeypatch.setattr(scale, "estimate", lambda *args: estimated.append(args[2].world_size) or real_estimate(*args))
    assert nothing_fits_line(plan, max_world_size=8).endswith(
        f"; even at world size 8 full needs {gib_at_least(w8, 2)} GiB per rank: lower the sequence length or the "
        f"per-rank batch"), nothing_fits_line(plan, max_world_size=8)
    assert estimated == [8], f"a budget nothing fits at the largest world size was estimated at {estimated}, not there alone"
    estimated.clear()
    assert nothing_fits_line(plan, max_world_size=2).endswith(": the smallest feasible is "
                                                              f"{gib_at_least(full, 2)} GiB (full); lower the sequence "
                                                              f"length or the per-rank batch")
    assert estimated == [], "no larger world size to try, yet one was estimated"
    plan.model = at(tiny, batch=1)  # a batch of one cannot be lowered
    assert nothing_fits_line(plan, max_world_size=2).endswith(" GiB (full); lower the sequence length")


def test_a_sequential_policy_is_traced_whole_and_of_policies_that_recompute_nothing_none_is_chosen():
    """Past MAX_TRACED_DEPTH layers, ``sequential``'s segments follow the depth (not affine): it is
    traced at every layer while the others are extrapolated, and the plan says so (it refused the
    whole plan before, at ``seed`` and any deeper user family). With every policy fitting, ``none``
    is chosen over ``sac``, which recomputes no matmul but its elementwise ops (more backward ops)."""
    from ac_bench.scale import MAX_TRACED_DEPTH, at, plan_lines
    deep = at(get_flavor("tiny"), depth=MAX_TRACED_DEPTH + 1)
    plan = plan_at_scale(deep, ShardedSetup(8, **NO_MP), GIB, policies=("none", "sac", "sequential"))
    depths = {name: r.sharding["extrapolated_from_depths"] for name, r in plan.records.items()}
    assert depths["sequential"] is None and depths["none"] and depths["sac"], depths
    assert plan.recompute_flops("sac") == 0 and plan.records["sac"].backward_ops > plan.records["none"].backward_ops
    assert plan.chosen == "none", plan.fitting()
    assert plan_lines(plan)[2].startswith("plan: none (no checkpointing) fits 1 GiB per GPU: "), plan_lines(plan)
    assert f"; sequential traced at all {deep.depth} layers;" in plan_lines(plan)[-1], plan_lines(plan)[-1]


def test_extrapolation_depths_step_by_the_policy_period():
    from ac_bench.models import get_policy
    assert extrapolation_depths(get_policy("none"), 32) == (2, 3, 4)
    assert extrapolation_depths(get_policy("every_other"), 32) == (2, 4, 6)
    assert extrapolation_depths(get_policy("every_3"), 80) == (2, 5, 8)
    assert extrapolation_depths(get_policy("every_3"), 126) == (3, 6, 9)


def test_an_estimate_refuses_to_run_beside_a_process_group():
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        with pytest.raises(ScaleError, match="a process group is already initialised in this process"):
            estimate_rank(get_flavor("tiny"), "none-sdpa", ShardedSetup(2, **NO_MP))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("version", "refused"), [("2.11.0+cu130", True), ("2.10.1", True), ("2.12.1+cu130", False),
                                                  ("2.13.0+cpu", False), ("2.16.0.dev20270101", False)])
def test_an_estimate_under_a_torch_whose_estimate_disagrees_with_the_launch_is_refused(version, refused):
    problem = scale.estimate_torch_problem(version)
    assert (problem is not None) == refused, problem
    if refused:
        assert problem.startswith(f"torch {version}: ") and "install torch>=2.12" in problem and "\n" not in problem


def test_the_plan_at_scale_under_too_old_a_torch_is_one_line(monkeypatch, capsys):
    import torch
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    with pytest.raises(ScaleError, match=r"^torch 2\.11\.0\+cu130: before torch 2\.12 the fake-process-group estimate overstates"):
        estimate_rank(get_flavor("tiny"), "none-sdpa", ShardedSetup(2, **NO_MP))
    assert "install torch>=2.12" in one_line_error(
        capsys, ["plan", "--model", "llama3-8b", "--world-size", "8", "--budget-gib", "80"])


@pytest.mark.slow
@pytest.mark.deep
def test_plan_for_llama3_8b_prints_the_cheapest_policy(capsys, tmp_path):
    """The command for Llama-3-8B over 64 GPUs of 40 GiB (~40 s): the plan line names a policy
    that fits with its margin, the markdown carries the command that regenerates it."""
    pytest.importorskip("transformers")
    md = tmp_path / "plan.md"
    status = report_main(["plan", "--model", "llama3-8b", "--world-size", "64", "--budget-gib", "40",
                          "--markdown", str(md)])
    out = capsys.readouterr().out
    assert status == 0, out
    plan = next(line for line in out.splitlines() if line.startswith("plan: "))
    assert "fits 40 GiB per GPU" in plan and "margin" in plan, plan
    assert "--model llama3-8b --world-size 64 --budget-gib 40" in md.read_text()


def test_the_device_comparison_script_agrees_with_itself_on_the_cpu(tmp_path):
    """``scripts/scale_vs_device.py`` (the GPU session's check of the estimate against a real
    one-GPU run) at tiny on the CPU, gloo, world size 1: the estimate and the run agree on
    every figure it tabulates (~8 s)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "t.md"
    result = subprocess.run([sys.executable, str(root / "scripts" / "scale_vs_device.py"), "--flavor", "tiny",
                             "--depth", "3", "--device", "cpu", "--no-mixed-precision", "--variants",
                             "none-sdpa,full-sdpa", "--out", str(out)], capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| none") or
            line.startswith("| full")]
    assert len(rows) == 14, out.read_text()
    moved = [r for r in rows if r[4] != "+0"]
    assert moved == [], moved


def test_the_accept_command_of_an_estimate_at_scale_selects_its_test():
    """The gate's accept command for ``llama3-8b-w64-none-sdpa`` (a model that is no flavor):
    no ``--flavor`` (which would refuse the name), and its ``-k`` selects exactly the gate test
    of that variant when pasted (collected, not run)."""
    import subprocess
    import sys
    from pathlib import Path

    from ac_bench.gate.baselines import accept_command
    from ac_bench.record import Measurement
    record = dataclasses.replace(estimate_rank(get_flavor("tiny"), "none-sdpa", ShardedSetup(64, **NO_MP)),
                                 flavor="llama3-8b")
    command = accept_command(record)
    assert command == "pytest bench/ --device cpu --update-baselines -k llama3-8b-w64-none-sdpa", command
    assert isinstance(record, Measurement)
    root = Path(__file__).resolve().parents[1]
    words = command.split()[1:]
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *words, "--collect-only", "-q"],
                            cwd=root, capture_output=True, text=True, timeout=300)
    selected = [line for line in result.stdout.splitlines() if "::" in line]
    assert selected == ["bench/test_scale.py::test_llama3_8b_at_world_size_64_matches_baseline[cpu-llama3-8b-w64-none-sdpa]"], \
        result.stdout[-2000:] + result.stderr[-2000:]


def test_the_depths_move_deeper_while_they_are_not_affine(monkeypatch):
    """``estimate`` at 32 layers with figures affine from 3 layers on and a kink at 2 (as
    Llama-3-405B over 8 ranks has): extrapolated from depths 3, 4, 5, equal to the affine
    figures at 32; with the kink at every depth it gives up after ``MAX_SHIFTS`` moves with
    NotAffine naming the figure."""
    import ac_bench.scale as scale

    base = estimate_rank(get_flavor("tiny"), "none-sdpa", ShardedSetup(2, **NO_MP))

    def affine(value, d):
        return value + 1000 * d

    def fake(kink_until: int):
        def estimate_at(flavor, variant, setup):
            d = flavor.depth
            phases = {k: {"peak_bytes": affine(v["peak_bytes"], d),
                          "breakdown": {c: affine(b, d) for c, b in v["breakdown"].items()}}
                      for k, v in base.sharding["phases"].items()}
            metrics = {m: affine(getattr(base, m), d) for m in ("resident_bytes", "optimizer_step_peak_bytes",
                                                                "activation_peak_bytes", "forward_kept_bytes")}
            metrics["resident_bytes"] += d * d if d <= kink_until else 0
            top = max(phases, key=lambda p: phases[p]["peak_bytes"])
            return dataclasses.replace(base, depth=d, peak_bytes=phases[top]["peak_bytes"],
                                       breakdown=phases[top]["breakdown"], sharding={**base.sharding, "phases": phases},
                                       **metrics)
        return estimate_at

    monkeypatch.setattr(scale, "estimate_rank", fake(kink_until=2))
    record = scale.estimate(scale.at(get_flavor("tiny"), depth=32), "none-sdpa", ShardedSetup(2, **NO_MP))
    assert record.sharding["extrapolated_from_depths"] == [3, 4, 5]
    assert record.resident_bytes == affine(base.resident_bytes, 32), record.resident_bytes
    monkeypatch.setattr(scale, "estimate_rank", fake(kink_until=99))
    with pytest.raises(scale.NotAffine, match=r"resident_bytes .* at depths 5, 6, 7"):
        scale.extrapolate(tuple(fake(99)(scale.at(get_flavor("tiny"), depth=d), "none-sdpa", None) for d in (5, 6, 7)),
                          32)
    # Past MAX_SHIFTS moves, every layer is traced (it raised NotAffine before).
    traced = scale.estimate(scale.at(get_flavor("tiny"), depth=32), "none-sdpa", ShardedSetup(2, **NO_MP))
    assert traced.depth == 32 and traced.sharding["extrapolated_from_depths"] is None, traced.sharding


def test_a_peak_that_deeper_models_outgrow_is_traced_at_every_layer_not_extrapolated():
    """Llama-3-8B over 64 ranks at sequence 1024: ``none``'s peak grows 13.6 MB a layer at depths
    2 to 6 and 205.7 MB from 7 on (then the end of the forward, every layer kept, is the top).
    Extrapolated from 2, 3, 4 it said 7.68 GiB at 32 layers, under what the forward keeps (6.65
    GiB over 1.87 resident); the trace of all 32 says 12.23. ``estimate`` now refuses that line
    and, with no affine window in reach, traces every layer: it equals the full trace."""
    pytest.importorskip("transformers", reason="Llama 3 is transformers' LlamaForCausalLM: pip install -e '.[hf]'")
    from ac_bench.scale import at, estimate, scale_model
    flavor = at(scale_model("llama3-8b"), seq_len=1024)
    setup = ShardedSetup(64)
    record = estimate(flavor, "none-sdpa", setup)
    traced = estimate_rank(flavor, "none-sdpa", setup)
    assert record.activation_peak_bytes >= record.forward_kept_bytes, record
    assert (record.peak_bytes, record.activation_peak_bytes) == (traced.peak_bytes, traced.activation_peak_bytes), (
        record.peak_bytes, traced.peak_bytes)
    assert record.peak_bytes > 12 * GIB, record.peak_bytes / GIB


def test_the_fake_world_leaves_the_process_as_it_found_it():
    """After an estimate no process group is left, and ``sys.excepthook`` is the one before
    (``init_process_group`` wraps it to prefix every traceback line with the rank, for good)."""
    import sys

    import torch.distributed as dist

    from ac_bench.scale import fake_world
    hook = sys.excepthook
    for world in (2, 8):
        with fake_world(world):
            assert dist.get_world_size() == world
    assert not dist.is_initialized() and sys.excepthook is hook


#: Parameter counts of the published configurations (Meta's params.json, Qwen's config.json),
#: counted layer by layer from their fields; the model cards' rounded totals agree (Llama 3:
#: 8.03B, 70.6B, 406B; Qwen3: 8.2B, 14.8B).
PUBLISHED_PARAMETERS = {"llama3-8b": 8_030_261_248, "llama3-70b": 70_553_706_496, "llama3-405b": 405_853_388_800,
                        "qwen3-8b": 8_190_735_360, "qwen3-14b": 14_768_307_200}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_every_scale_model_has_its_published_parameter_count(name):
    """The model the estimate traces (built on the meta device, no memory) is the published one:
    layers, width, heads, K/V heads, MLP width, vocabulary and the output head (tied or not)
    together give its parameter count to the parameter."""
    pytest.importorskip("transformers", reason="the scale models are transformers' own: pip install -e '.[hf]'")
    from ac_bench.models.families import build_model
    from ac_bench.scale import scale_model
    try:
        flavor = scale_model(name)
    except ScaleError as exc:
        pytest.skip(str(exc))
    model = build_model(flavor, "sdpa", "meta")
    count = sum(p.numel() for p in model.parameters())
    assert count == PUBLISHED_PARAMETERS[name], f"{name}: {count:,} parameters, published {PUBLISHED_PARAMETERS[name]:,}"


@pytest.mark.parametrize("argv,expected", [
    (["libraries", "--out", "x.md", "--models", "qwen3-1t"], "unknown model 'qwen3-1t'"),
    (["libraries", "--out", "x.md", "--depth", "0"], "--depth 0"),
    (["libraries", "--out", "x.md", "--models", "llama3-8b", "--depth", "40"], "--depth 40: llama3-8b has 32 layers"),
    (["libraries", "--out", ".", "--depth", "1"], "is a folder"),
    (["libraries", "--out", "x.md", "--budget-gib", "nan"], "positive number of GiB"),
    (["libraries", "--out", "x.md", "--models", ","], "give one or more models, each once"),
    (["libraries", "--out", "x.md", "--models", "qwen3-8b,qwen3-8b"], "each once"),
])
def test_the_libraries_table_refuses_bad_input_in_one_line(capsys, argv, expected):
    pytest.importorskip("transformers", reason="the scale models are transformers' own: pip install -e '.[hf]'")
    assert expected in one_line_error(capsys, argv)


def test_the_libraries_table_puts_the_native_switch_beside_whole_layers(tmp_path):
    """``report libraries`` at Qwen3-8B's width cut to 2 layers and 256 tokens: the model's own
    ``gradient_checkpointing_enable`` keeps what ``whole_layers`` keeps, and the planner's plan
    fits its budget, halfway between their peaks and ``none``'s."""
    pytest.importorskip("transformers", reason="the scale models are transformers' own: pip install -e '.[hf]'")
    out = tmp_path / "libraries.md"
    assert report_main(["libraries", "--out", str(out), "--models", "qwen3-8b", "--depth", "2", "--seq-len", "256"]) == 0
    text = out.read_text()
    rows = {line.split("|")[1].strip(" `"): [c.strip() for c in line.split("|")[3:-1]]
            for line in text.splitlines() if line.startswith("| `")}
    assert set(rows) >= {"none", "native", "whole_layers", "full", "sac"} and len(rows) == 6, rows
    assert rows["native"] == rows["whole_layers"], f"native {rows['native']} against whole_layers {rows['whole_layers']}"
    plan = next(name for name in rows if name.startswith("plan_"))
    budget = float(text.split("the planner's plan for ")[1].split(" GiB")[0])
    assert float(rows[plan][0]) <= budget, f"{plan}: peak {rows[plan][0]} GiB over the budget {budget} GiB"
    assert float(rows["none"][1]) > float(rows["whole_layers"][1]), rows


def test_the_breakdown_at_a_launchs_peak_may_shift_by_one_blocks_fsdp_buffers_not_more():
    """gloo's timing can put a launch's peak at a neighbouring moment (one clean-clone run had
    4,096 B more activations on rank 1 of tiny-w2-every_3-eager): categories may differ by up to
    one block's FSDP buffers in all (``fsdp_unit_bytes``), and no more."""
    from ac_bench.scale import fsdp_unit_bytes, launch_differences
    estimated = estimate_rank(get_flavor("tiny"), "every_3-eager", ShardedSetup(2, **NO_MP))
    bound = fsdp_unit_bytes(estimated)
    assert launch_differences(estimated, estimated) == []

    def launched(more: int):
        breakdown = dict(estimated.breakdown, activations=estimated.breakdown["activations"] + more)
        return dataclasses.replace(estimated, breakdown=breakdown)
    assert 4096 <= bound and launch_differences(estimated, launched(4096)) == []
    assert launch_differences(estimated, launched(bound)) == []
    problems = launch_differences(estimated, launched(bound + 1))
    assert len(problems) == 1 and "the breakdown at the peak" in problems[0], problems


def test_whole_layers_offload_sends_each_layers_input_to_the_host_and_is_chosen_only_where_it_alone_fits(capsys):
    """``whole_layers_offload`` (transformers' ``offload=True``: each layer checkpointed whole,
    what the checkpoint saves, the layer's input, in host memory) recomputes what ``whole_layers``
    recomputes and offloads each layer's input: at ``tiny`` over 2 ranks, float32, ``depth``
    hidden states, of which the first is the step's input, which the caller holds, so the forward
    keeps ``depth - 1`` fewer on the device. ``--offload-cost`` prices each offloaded byte: with
    both fitting, ``whole_layers`` (same FLOPs, nothing offloaded) is the plan; with only the
    offloading one fitting, it is, and the line says how much host memory it takes."""
    from ac_bench.scale import scale_policies
    tiny = at(get_flavor("tiny"), seq_len=512)
    hidden = tiny.batch * tiny.seq_len * tiny.d_model * 4
    # Priced offloading brings whole_layers with it, also where the family does not list it
    # (tiny's does not: the plan offered the offloading one alone, a fresh user's check).
    assert "whole_layers" not in scale_policies(tiny), scale_policies(tiny)
    assert scale_policies(tiny, offload=True)[-2:] == ("whole_layers", "whole_layers_offload"), scale_policies(tiny, True)
    plan = plan_at_scale(tiny, ShardedSetup(2, **NO_MP), 0, policies=("none", "whole_layers", "whole_layers_offload"),
                         offload_cost=30919)
    whole, offloaded = plan.records["whole_layers"], plan.records["whole_layers_offload"]
    assert (whole.offloaded_bytes, offloaded.offloaded_bytes) == (0, tiny.depth * hidden), (whole, offloaded)
    assert offloaded.flops == whole.flops, "offloading recomputed other FLOPs than whole layers"
    assert whole.forward_kept_bytes - offloaded.forward_kept_bytes == (tiny.depth - 1) * hidden, (
        whole.forward_kept_bytes, offloaded.forward_kept_bytes, hidden)
    assert offloaded.peak_bytes < whole.peak_bytes < plan.records["none"].peak_bytes, plan.records
    assert plan.cost("whole_layers_offload") == plan.cost("whole_layers") + 30919 * tiny.depth * hidden
    plan.budget_bytes = whole.peak_bytes
    assert plan.fitting() == ["whole_layers", "whole_layers_offload"], plan.fitting()
    plan.budget_bytes = offloaded.peak_bytes
    assert plan.chosen == "whole_layers_offload", plan.fitting()
    line = plan_lines(plan)[2]
    assert line.startswith("plan: whole_layers_offload fits ") and (
        f", offloads {tiny.depth * hidden / 2 ** 10:.2f} KiB per rank to host memory (priced 30919 FLOPs a byte: "
        f"{30919 * tiny.depth * hidden / 1e9:.2f} GFLOP); the margin is thin, 0.0% of the peak") in line, line
    assert "| offloaded to host " in plan_lines(plan)[4], plan_lines(plan)[4]
    # The command: the column and the pricing note, and --offload-cost in the Regenerate line.
    assert report_main(["plan", "--flavor", "tiny", "--world-size", "2", "--budget-gib", "1", "--seq-len", "512",
                        "--mixed-precision", "none", "--offload-cost", "h200"]) == 0
    out = capsys.readouterr().out
    assert "| whole_layers_offload | " in out and "Offloading is priced at 30919 FLOPs per byte" in out, out
