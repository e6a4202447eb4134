"""The offloaded layer (``lo``) in the per-block plan space (``ac_bench.blockplan``,
``ac_bench.milp``): its figures come from fake tensors and a simulated host on the CPU, its
plans measure as predicted, the MILP's answer with it equals brute force, and what it costs is
what the planner weighs against recompute.

On the CPU the device is its own host: ``save_on_cpu`` moves nothing. The simulated host
(``ac_bench.models.ac.offload.simulated_host``) does to the CPU's memory what ``save_on_cpu`` does
to a GPU's: a saved tensor leaves the device at pack time and comes back as a new device tensor
at unpack time. Real offload on a GPU is for ``scripts/gpu-check``.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import pytest
import torch

from ac_bench.blockplan import OFFLOAD_PRESETS, brute_force, every_plan, measure_figures, offload_cost, regions
from ac_bench.models import BlockPlanAC, get_flavor
from ac_bench.models.ac.blocks import OFFLOAD_CHOICES
from ac_bench.models.ac.offload import SimulatedHost, simulated_host
from ac_bench.record import measure_variant
from tests.helpers import needs_pulp, tiny_seq128

TINY_128 = tiny_seq128()
#: A cheap offload (FLOPs per byte), so that the solver takes it at some budgets.
CHEAP = 1
#: Plans with offloaded layers and sublayers next to every other kind of block, in both orders.
MIXED = (("lo", "nn", "ff"), ("nn", "lo", "nn"), ("ff", "lo", "ss"), ("lo", "ls", "lo"), ("lf", "lo", "lo"),
         ("sn", "nf", "lo"), ("lo", "lo", "lo"), ("on", "nn", "no"), ("nn", "oo", "fs"), ("fo", "of", "lo"),
         ("so", "os", "nn"), ("oo", "lf", "on"))


@functools.cache
def figures(cost: int = CHEAP):
    from ac_bench.milp import simulated_measure
    return measure_figures(TINY_128, "sdpa", "cpu", simulated_measure(TINY_128), offload_flops_per_byte=cost)


def test_offloaded_layers_measure_as_predicted():
    """Peak, activation peak, kept bytes, offloaded bytes and FLOPs of mixed plans, measured
    on the simulated host, equal the prediction; an offloaded layer does not keep its input on
    the device (``handed_on``: one residual-stream tensor), and without that term plans miss."""
    from ac_bench.milp import simulated_measure
    fig = figures()
    assert set(OFFLOAD_CHOICES) - set(fig.space) == {"po"}, fig.space  # no P·V choice with sdpa
    # A block does not keep its input on the device where the region that saves it (the
    # attention's LayerNorm) is offloaded: the whole layer, or the attention sublayer.
    hidden = TINY_128.batch * TINY_128.seq_len * TINY_128.d_model * 4  # float32
    assert fig.handed_on == {c: hidden if c == "lo" or c[0] == "o" else 0 for c in fig.space}, fig.handed_on
    measure = simulated_measure(TINY_128)
    none = measure("none-sdpa")
    without = dataclasses.replace(fig, handed_on={})
    missed = 0
    for blocks in MIXED:
        policy, p = BlockPlanAC.of(blocks), fig.predict(blocks)
        r = measure(f"{policy.name}-sdpa")
        got = (r.peak_bytes, r.activation_peak_bytes, r.forward_kept_bytes, r.offloaded_bytes, r.flops - none.flops)
        want = (p.peak_bytes, p.activation_peak_bytes, p.kept_bytes, p.offloaded_bytes, p.recompute_flops)
        assert got == want, f"{policy.name}-sdpa: measured (peak, activation peak, kept, offloaded, recompute) {got}, " \
                            f"predicted {want} (peak at the {p.peak_at})"
        assert r.offloaded_bytes > 0, (policy.name, r.offloaded_bytes)
        q = without.predict(blocks)
        missed += (q.peak_bytes, q.kept_bytes) != (r.peak_bytes, r.forward_kept_bytes)
    assert missed >= 2, f"without handed_on only {missed} of {len(MIXED)} plans miss: the test no longer shows the term"


def test_the_milp_with_offload_equals_brute_force():
    """Every distinct predicted peak as a budget: the MILP's cost (recompute FLOPs plus the
    offloaded bytes') and region count equal the exhaustive answer's, with and without a
    host budget; offload is chosen at some budgets, and a host budget of 0 rules it out."""
    needs_pulp()
    from ac_bench.milp import solve
    fig = figures()
    peaks = sorted({fig.predict(b).peak_bytes for b in every_plan(fig)})
    budgets = sorted({*peaks[::max(1, len(peaks) // 10)], peaks[-1]})
    host = fig.of(1, "lo").offloaded  # one layer's worth
    offloading = 0
    for budget in budgets:
        for host_budget in (None, host, 0):
            expected = brute_force(fig, budget, host_budget)
            label = f"tiny_seq128 sdpa at {budget:,} B, host budget {host_budget}"
            if expected is None:
                continue
            got = solve(fig, budget, host_budget_bytes=host_budget)
            assert got.gap == 0.0, f"{label}: not proven optimal"
            assert (got.prediction.cost, sum(map(regions, got.blocks))) == (
                expected[1].cost, sum(map(regions, expected[0]))), (
                f"{label}: the MILP chose {BlockPlanAC.of(got.blocks).name} (cost {got.prediction.cost:,}), "
                f"the brute force {BlockPlanAC.of(expected[0]).name} (cost {expected[1].cost:,})")
            assert host_budget is None or got.prediction.offloaded_bytes <= host_budget, label
            offloading += host_budget is None and bool(set(got.blocks) & set(OFFLOAD_CHOICES))
    assert offloading >= 2, f"offload chosen at {offloading} budgets only: the test no longer exercises it"


def test_offload_reaches_budgets_recompute_alone_cannot_and_its_cost_decides():
    """The smallest feasible budget with offload is below the one without; at the H200 preset's
    cost, recompute wins wherever both fit, at a cost of 0 offload does."""
    needs_pulp()
    from ac_bench.milp import smallest_peak, solve
    fig = figures()
    plain = dataclasses.replace(fig, choices={k: v for k, v in fig.choices.items() if k[1] not in OFFLOAD_CHOICES},
                                offload_flops_per_byte=None)
    lowest, lowest_plain = smallest_peak(fig)[1].peak_bytes, smallest_peak(plain)[1].peak_bytes
    assert lowest < lowest_plain, f"offload does not lower the smallest feasible budget: {lowest:,} B against {lowest_plain:,} B"
    budget = lowest_plain
    h200 = solve(dataclasses.replace(fig, offload_flops_per_byte=offload_cost(*OFFLOAD_PRESETS["h200"])), budget)
    assert not set(h200.blocks) & set(OFFLOAD_CHOICES), h200.blocks
    free = solve(dataclasses.replace(fig, offload_flops_per_byte=0), budget)
    assert set(free.blocks) & set(OFFLOAD_CHOICES), free.blocks


def test_offload_cost_is_twice_the_flop_rate_over_the_link_rate():
    assert offload_cost(989.4e12, 64e9) == 30919
    with pytest.raises(ValueError, match="positive FLOP rate and link rate"):
        offload_cost(1e12, 0)
    with pytest.raises(ValueError, match="must be >= 0 FLOPs"):
        measure_figures(TINY_128, "sdpa", offload_flops_per_byte=-1)


def test_the_simulated_host_takes_fake_tensors_only():
    """Real tensors would come back as uninitialised memory: refused."""
    t = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="the simulated host takes fake tensors only"):
        with SimulatedHost():
            (t * t).sum()


def test_an_offloaded_layer_on_the_cpu_moves_nothing():
    """Without the simulated host a CPU plan with ``lo`` runs for real, as the ``offload``
    policy does there: nothing moves, it keeps what ``none`` keeps."""
    flavor = get_flavor("tiny")
    with simulated_host():  # real tensors: the wrapper uses save_on_cpu, not the simulated host
        r = measure_variant(flavor, "blocks_lo.nn.lo-sdpa", "cpu")
    none = measure_variant(flavor, "none-sdpa", "cpu")
    assert (r.offloaded_bytes, r.forward_kept_bytes, r.flops) == (0, none.forward_kept_bytes, none.flops), r


@pytest.mark.parametrize("argv,says", [
    (["plan", "--flavor", "tiny", "--budget-gib", "1", "--offload-cost", "h200"],
     "--offload-cost and --host-gib plan offloaded sublayers and layers: add --space blocks"),
    (["plan", "--space", "blocks", "--flavor", "tiny", "--budget-gib", "1", "--host-gib", "2"],
     "--host-gib bounds what offloading takes: add --offload-cost"),
    (["plan", "--space", "blocks", "--flavor", "tiny", "--budget-gib", "1", "--offload-cost", "fast"],
     "expected FLOPs per offloaded byte (a whole number) or one of h100, h200, a100, got 'fast'"),
    (["plan", "--space", "blocks", "--flavor", "tiny", "--budget-gib", "1", "--offload-cost", "-1"],
     "the cost of an offloaded byte must be a whole number of FLOPs from 0 to 1e+09"),
    (["plan", "--space", "blocks", "--flavor", "tiny", "--budget-gib", "1", "--offload-cost", "nan"],
     "the cost of an offloaded byte must be a whole number of FLOPs from 0 to 1e+09"),
    (["plan", "--space", "blocks", "--flavor", "tiny", "--budget-gib", "1", "--offload-cost", "2.5"],
     "the cost of an offloaded byte must be a whole number of FLOPs from 0 to 1e+09"),
    (["plan", "--space", "blocks", "--flavor", "tiny", "--budget-gib", "1", "--offload-cost", "1e16"],
     "the cost of an offloaded byte must be a whole number of FLOPs from 0 to 1e+09 (leave --offload-cost out"),
    (["plan", "--space", "blocks", "--flavor", "tiny", "--budget-gib", "1", "--offload-cost", "0",
      "--host-gib", "-0.5"], "the host budget must be a number of GiB from 0 to 1048576, got '-0.5'"),
    (["plan", "--space", "blocks", "--flavor", "tiny", "--budget-gib", "1", "--offload-cost", "0",
      "--host-gib", "1e300"], "the host budget must be a number of GiB from 0 to 1048576, got '1e300'"),
])
def test_bad_offload_input_is_one_line(capsys, argv, says):
    from ac_bench.cli.report import main
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and says in err and "Traceback" not in err, (code, err)
    assert err.count("\n") <= 3, err  # argparse prints its usage line(s) before the one error line


def test_a_plan_that_offloads_is_not_exported_and_each_framework_says_why():
    from ac_bench.export import OFFLOAD_NOT_EXPORTED, export_all
    exports = export_all(BlockPlanAC.of(("lo", "nn", "ff")))
    assert [(e.framework, e.config) for e in exports] == [(name, None) for name in OFFLOAD_NOT_EXPORTED]
    assert all(e.note.startswith("does not fit: the plan offloads to host memory (o, lo); ") for e in exports), exports


def test_offload_plan_names_parse_back():
    policy = BlockPlanAC.of(("lo", "lo", "nn", "lf", "of"))
    assert policy.name == "blocks_lo2.nn.lf.of" and BlockPlanAC.from_name(policy.name) == policy
    assert policy.regions(5) == [(3, "layer"), (4, "mlp")]  # an offloaded region is not checkpointed


# 22 s; scripts/gpu-check runs this very plan on both devices: deep, for make test's 20 minutes.
@pytest.mark.deep
def test_the_gpu_check_s_offload_plan_offloads_and_measures_as_predicted_on_the_cpu(capsys):
    """``scripts/gpu-check`` runs this plan on the GPU (real pinned copies) and on the CPU's
    simulated host; here the CPU half: it offloads layers and is measured as predicted."""
    needs_pulp()
    from ac_bench.cli.gpu_check import OFFLOAD_PLAN
    from ac_bench.cli.report import main
    assert main([*OFFLOAD_PLAN, "--device", "cpu"]) in (0, None)
    head = capsys.readouterr().out.splitlines()[0]
    measured, predicted = head.split("traced peak ")[1].split(" B, predicted ")  # fake tensors: traced
    plan = re.search(r"(blocks_\S+)-sdpa", head).group(1)
    assert "offloaded" in head and set(BlockPlanAC.from_name(plan).blocks) & set(OFFLOAD_CHOICES), head
    assert measured.split("(")[1] == predicted.split(",")[0], head


@pytest.mark.parametrize("name,says", [("blocks_op.nn", "'op' is not a block code (p, saving P·V, is for attention only)"),
                                       ("blocks_lo2.ox", "'ox' is not a block code; write blocks_ then")])
def test_a_bad_block_code_is_named(name, says):
    with pytest.raises(ValueError) as info:
        BlockPlanAC.from_name(name)
    assert says in str(info.value) and "\n" not in str(info.value), info.value


def test_offload_options_take_whole_numbers_and_a_host_budget_of_zero():
    """``--offload-cost`` takes a whole number however written, and ``--host-gib 0`` (offload
    nothing), which the API takes too; a fraction, a negative or a non-finite value is refused above."""
    from ac_bench.cli.plan import _host_gib, _offload_cost
    h200 = offload_cost(*OFFLOAD_PRESETS["h200"])
    assert [_offload_cost(t) for t in ("0", "3.0", "1e3", "30919", "H200")] == [0, 3, 1000, 30919, h200]
    assert [_host_gib(t) for t in ("0", "0.25")] == [0.0, 0.25]
