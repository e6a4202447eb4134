"""The per-block plan with the fewest recompute FLOPs under a step-peak budget, solved exactly as a
mixed-integer linear program (PuLP, solved by HiGHS through highspy; where highspy is missing, by
the CBC that PuLP 3 bundles and PuLP 4 no longer does).

Variables: x[i, c] in {0, 1}, block i takes choice c (of ``RegionFigures.space``), sum_c x[i, c] = 1.
The peak of ``ac_bench.blockplan`` is a maximum of sums that are linear in x, so "peak <= budget"
is one linear row per moment of the step, with no big-M:

    forward of block i:  sum_{j<i} K_j . x_j + F_i . x_i            <= budget - B   (i = 0..d-1)
    backward of block i: sum_{j<i} K_j . x_j + (Q_i + s_i G) . x_i  <= budget - B   (i = 0..d-1)
    between them:        sum_j K_j . x_j + E . x_{d-1}              <= budget - B

with block j's K, F and Q (j >= 2) plus D . x_j - D . x_{j-1} (``RegionFigures.handed_on``: what
a block hands on to be freed after its forward depends on its choice; in the notebook family 0
but for the offloading choices ``lo`` and ``o?``)

and ``other <= budget`` (else nothing fits). Objective: sum_i (R_i + w O_i) . x_i, in units of
the greatest common divisor of those figures, so that it is integral and the solver's absolute
gap of 0.5 proves optimality; O is the bytes a choice offloads (``o``, ``lo``; 0 for every other) and w the
cost of an offloaded byte in FLOPs (``blockplan.offload_cost``; the offload choice is in the
space only where w is given). With a host budget, one more row: sum_i O_i . x_i <= host budget.
A second solve fixes that cost at the optimum and minimises the number of checkpointed (or
offloaded) regions (``regions``): the FLOPs counted are matmuls', and a selective region that
saves every matmul output still recomputes its elementwise ops, so of two plans equally cheap
in FLOPs the one that checkpoints less is taken. Every answer is
checked against ``RegionFigures.predict`` in integer arithmetic; the self-tests check
it against brute-force enumeration of every plan at ``tiny`` and ``small``.

PuLP and highspy are an optional dependency (``pip install 'ac-bench[milp]'``); without a solver
``solve`` raises ``SolverMissing`` with that line. ``AC_BENCH_MILP_SOLVER=highs|cbc`` picks one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

from ac_bench.blockplan import Prediction, RegionFigures, measure_figures, regions
from ac_bench.models import BlockPlanAC, Flavor
from ac_bench.models.ac.offload import simulated_host
from ac_bench.outputs import bytes_text, flops_text, gib_at_least, gib_text
from ac_bench.record import Measurement, measure_variant

GIB, MIB = 2 ** 30, 2 ** 20

#: The solver's time limit per solve (seconds); a solve stopped by it reports the plan it has, not proven.
TIME_LIMIT_S = 120
#: The environment variable that picks the solver (``highs`` or ``cbc``; default: HiGHS where
#: highspy is installed, else CBC).
SOLVER_ENV = "AC_BENCH_MILP_SOLVER"
#: Solver names as printed, by the name PuLP gives each.
SOLVER_NAMES = {"HiGHS": "HiGHS", "PULP_CBC_CMD": "CBC"}


class SolverMissing(RuntimeError):
    """PuLP, or a solver PuLP can call (HiGHS through highspy, or PuLP 3's bundled CBC), is not
    installed; or ``AC_BENCH_MILP_SOLVER`` names one that is not."""


class NothingFits(ValueError):
    """No per-block plan is predicted to fit; the message names the smallest budget that does."""


@dataclass(frozen=True)
class Solution:
    """The solver's plan (one choice per block), its predicted figures, the seconds both solves
    took, and whether the solver proved it optimal (``gap`` 0.0) or stopped at its time limit
    (``gap`` None: the best plan found, the bound not reported through PuLP); ``solver`` is
    "HiGHS" or "CBC"."""

    blocks: tuple[str, ...]
    prediction: Prediction
    seconds: float
    gap: float | None
    variables: int
    rows: int
    solver: str


def _pulp():
    try:
        import pulp
    except ImportError:
        raise SolverMissing("the MILP planner needs PuLP and highspy: pip install 'ac-bench[milp]' "
                            "(or pip install pulp highspy)") from None
    return pulp


def _solver(pulp):
    """The solver PuLP calls: HiGHS (highspy) where installed, else PuLP 3's bundled CBC (PuLP 4
    bundles none); ``AC_BENCH_MILP_SOLVER=highs|cbc`` insists on one. Single-threaded (the same
    answer every run), absolute gap 0.5 on an integral objective (proven optimal), TIME_LIMIT_S.
    Raises SolverMissing, naming what to install."""
    wanted = os.environ.get(SOLVER_ENV, "").strip().lower()
    if wanted not in ("", "highs", "cbc"):
        raise SolverMissing(f"{SOLVER_ENV}={wanted!r}: the MILP planner solves with highs or cbc; "
                            f"set it to one of them, or unset it")
    options = dict(msg=False, gapAbs=0.5, gapRel=0.0, timeLimit=TIME_LIMIT_S, threads=1)
    if wanted in ("", "highs") and getattr(pulp, "HiGHS", None) is not None and pulp.HiGHS(msg=False).available():
        return pulp.HiGHS(**options)
    if wanted in ("", "cbc") and getattr(pulp, "PULP_CBC_CMD", None) is not None:
        with warnings.catch_warnings():
            # PuLP 3.3 announces that 4.0 drops the bundled CBC; HiGHS is the first choice.
            warnings.filterwarnings("ignore", "PULP_CBC_CMD is deprecated", DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(**options)
        if solver.available():
            return solver
    if wanted == "highs":
        raise SolverMissing(f"{SOLVER_ENV}=highs: highspy is not installed (pip install highspy); or unset "
                            f"{SOLVER_ENV} to fall back to PuLP 3's bundled CBC")
    if wanted == "cbc":
        raise SolverMissing(f"{SOLVER_ENV}=cbc: this PuLP ({pulp.__version__}) has no bundled CBC (PuLP 4 dropped "
                            f"it); unset {SOLVER_ENV} to solve with HiGHS (pip install highspy)")
    raise SolverMissing("the MILP planner needs a solver PuLP can call: pip install highspy "
                        "(or pip install 'ac-bench[milp]')")


def _rows(pulp, figures: RegionFigures, x) -> tuple[list, object]:
    """The left-hand sides of the peak rows (bytes above what is allocated when the forward
    starts), and what the blocks keep at the end of the forward (the sum of their K)."""
    d, rows, kept_before = figures.depth, [], 0
    for i in range(d):
        f = {c: figures.of(i, c) for c in figures.space}
        shift = _neighbour_shift(pulp, figures, x, i)
        rows.append(kept_before + shift + pulp.lpSum(f[c].forward * x[i, c] for c in figures.space))
        rows.append(kept_before + shift + pulp.lpSum((f[c].backward + figures.backward_shift(i)) * x[i, c]
                                                     for c in figures.space))
        kept_before = kept_before + shift + pulp.lpSum(f[c].kept * x[i, c] for c in figures.space)
    rows.append(kept_before + pulp.lpSum(figures.of(d - 1, c).tail * x[d - 1, c] for c in figures.space))
    return rows, kept_before


def _neighbour_shift(pulp, figures: RegionFigures, x, i: int):
    """``RegionFigures.neighbour_shift`` of block i, linear in x: D . x_i - D . x_{i-1} from block 2 on."""
    if i < 2 or not any(figures.handed_on.values()):
        return 0
    return pulp.lpSum(figures.handed_on.get(c, 0) * (x[i, c] - x[i - 1, c]) for c in figures.space)


def _model(pulp, figures: RegionFigures, sense):
    prob = pulp.LpProblem("checkpointing_plan", sense)
    x = {(i, c): prob.add_variable(f"x_{i}_{c}", cat="Binary") for i in range(figures.depth) for c in figures.space}
    for i in range(figures.depth):
        prob += pulp.lpSum(x[i, c] for c in figures.space) == 1, f"one_choice_{i}"
    return prob, x


def _solve(pulp, prob) -> tuple[int, bool, str]:
    """Solve; (PuLP's status, whether the solution is proven optimal, the solver as printed)."""
    solver = _solver(pulp)
    status = prob.solve(solver)
    return status, prob.sol_status == pulp.LpSolutionOptimal, _printed(solver)


def _printed(solver) -> str:
    return SOLVER_NAMES.get(solver.name, solver.name)


def solver_name() -> str:
    """The solver ``solve`` calls, as printed: "HiGHS" or "CBC". Raises SolverMissing."""
    return _printed(_solver(_pulp()))


def _chosen(figures: RegionFigures, x) -> tuple[str, ...]:
    return tuple(max(figures.space, key=lambda c: x[i, c].value() or 0.0) for i in range(figures.depth))


def _offloaded(pulp, figures: RegionFigures, x):
    """The bytes a plan offloads, linear in x."""
    return pulp.lpSum(figures.of(i, c).offloaded * x[i, c] for i in range(figures.depth) for c in figures.space)


def smallest_peak(figures: RegionFigures, host_budget_bytes: int | None = None) -> tuple[tuple[str, ...], Prediction]:
    """The plan with the lowest predicted peak (what the smallest feasible budget is)."""
    pulp = _pulp()
    prob, x = _model(pulp, figures, pulp.LpMinimize)
    z = prob.add_variable("peak", lowBound=0)
    prob += z
    for k, row in enumerate(_rows(pulp, figures, x)[0]):
        prob += row <= z, f"peak_{k}"
    if host_budget_bytes is not None:
        prob += _offloaded(pulp, figures, x) <= host_budget_bytes, "host"
    _solve(pulp, prob)
    blocks = _chosen(figures, x)
    return blocks, figures.predict(blocks)


def solve(figures: RegionFigures, budget_bytes: int, kept_budget_bytes: int | None = None,
          host_budget_bytes: int | None = None, *, _name_cheapest: bool = True) -> Solution:
    """The plan of lowest cost (recompute FLOPs, plus the offloaded bytes' where the figures
    have the offload choice) whose predicted step peak fits ``budget_bytes`` (then the fewest
    checkpointed or offloaded regions among those); ``NothingFits`` where none is predicted to.
    ``kept_budget_bytes``: also keep at most this much for backward at the end of the forward
    (``forward_kept_bytes``), to compare with a policy at its kept bytes. ``host_budget_bytes``:
    offload at most this much to host memory. (``_name_cheapest``: whether NothingFits names the
    cheapest plan at the smallest feasible budget, solving once more; off for that solve itself.)"""
    if not (isinstance(budget_bytes, int) and budget_bytes > 0):
        raise ValueError(f"budget must be a positive number of bytes, got {budget_bytes!r}")
    pulp = _pulp()
    start = time.perf_counter()
    room = budget_bytes - figures.before_forward
    nothing = _nothing_fits(figures, budget_bytes, host_budget_bytes, _name_cheapest)
    if figures.other_peak > budget_bytes or room < 0:
        raise nothing()

    def cost(f) -> int:
        return figures.cost(f.recompute_flops, f.offloaded)
    unit = reduce(math.gcd, (cost(f) for f in figures.choices.values()), 0) or 1
    prob, x = _model(pulp, figures, pulp.LpMinimize)
    flops = pulp.lpSum(cost(figures.of(i, c)) // unit * x[i, c]
                       for i in range(figures.depth) for c in figures.space)
    prob += flops
    rows, kept = _rows(pulp, figures, x)
    for k, row in enumerate(rows):
        prob += row <= room, f"peak_{k}"
    if kept_budget_bytes is not None:
        head = pulp.lpSum(figures.of(figures.depth - 1, c).head * x[figures.depth - 1, c] for c in figures.space)
        prob += kept + head <= kept_budget_bytes, "kept"
    if host_budget_bytes is not None:
        prob += _offloaded(pulp, figures, x) <= host_budget_bytes, "host"
    status, proven, solver = _solve(pulp, prob)
    if status != pulp.LpStatusOptimal:
        if kept_budget_bytes is not None:
            raise NothingFits(f"no per-block plan fits {budget_bytes} B keeping at most {kept_budget_bytes} B")
        raise nothing()
    best = round(pulp.value(flops))
    # Among the cheapest, the fewest checkpointed regions: a region whose matmuls are all saved
    # (sac with sdpa) recomputes no FLOP counted here but still its elementwise ops.
    prob.setObjective(pulp.lpSum(regions(c) * x[i, c] for i in range(figures.depth) for c in figures.space))
    prob += flops <= best, "fewest_flops"
    _, proven_second, _ = _solve(pulp, prob)
    blocks = _chosen(figures, x)
    prediction = figures.predict(blocks)
    if (prediction.peak_bytes > budget_bytes or prediction.cost != best * unit
            or (kept_budget_bytes is not None and prediction.kept_bytes > kept_budget_bytes)
            or (host_budget_bytes is not None and prediction.offloaded_bytes > host_budget_bytes)):
        raise RuntimeError(f"the solver's plan {blocks} predicts {prediction}, against its own optimum of "
                           f"{best * unit} FLOPs within {budget_bytes} B: a numerical error in {solver}")
    return Solution(blocks, prediction, time.perf_counter() - start, 0.0 if proven and proven_second else None,
                    variables=len(x), rows=prob.numConstraints(), solver=solver)


def _nothing_fits(figures: RegionFigures, budget_bytes: int, host_budget_bytes: int | None = None,
                  name_cheapest: bool = True):
    def error() -> NothingFits:
        blocks, p = smallest_peak(figures, host_budget_bytes)
        if name_cheapest:  # the cheapest plan at that peak, to name (that solve does not recurse here)
            with contextlib.suppress(NothingFits, RuntimeError):
                cheapest = solve(figures, p.peak_bytes, host_budget_bytes=host_budget_bytes, _name_cheapest=False)
                blocks, p = cheapest.blocks, cheapest.prediction
        host = "" if host_budget_bytes is None else f" offloading at most {gib_text(host_budget_bytes)} GiB"
        return NothingFits(f"no per-block plan fits {gib_text(budget_bytes)} GiB ({budget_bytes} B){host} for "
                           f"{figures.flavor} with {figures.attention} attention: the smallest feasible budget is "
                           f"{gib_at_least(p.peak_bytes, 3)} GiB ({p.peak_bytes} B, {BlockPlanAC.of(blocks).name})")
    return error


@dataclass
class BlockPlan:
    """The MILP planner's answer: the solution, the chosen plan's measured record (with the
    solution's predicted peak as ``predicted_peak_bytes``), and the ``none`` record it is
    compared with (recompute FLOPs = the plan's FLOPs less ``none``'s)."""

    flavor: Flavor
    attention: str
    budget_bytes: int
    solution: Solution
    policy: BlockPlanAC
    record: Measurement
    none: Measurement
    #: Plans the solver chose before this one that measured over the budget (name -> measured peak).
    misses: dict[str, int | None] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        s, r, p = self.solution, self.record, self.solution.prediction
        gap = "proven optimal" if s.gap == 0.0 else f"not proven optimal ({s.solver}'s time limit)"
        host = f", offloaded {bytes_text(p.offloaded_bytes)} to host memory" if p.offloaded_bytes else ""
        return (f"{self.flavor.name} {self.attention}, budget {gib_text(self.budget_bytes)} GiB ({self.budget_bytes} B): "
                f"{self.policy.name}-{self.attention} ({self.policy.describe()}); {r.peak_how} peak "
                f"{bytes_text(r.peak_bytes)} ({r.peak_bytes} B, predicted {p.peak_bytes}, at the {p.peak_at}), kept "
                f"{bytes_text(r.forward_kept_bytes)}, recompute {flops_text(r.flops - self.none.flops)}{host}; "
                f"{s.solver} {s.seconds:.2f} s, {gap}, {s.variables} variables, {s.rows} rows")


def simulated_measure(flavor: Flavor, device: str = "cpu") -> Callable[[str], Measurement]:
    """A variant's record on fake tensors with offloaded regions sent to the simulated host
    (``ac_bench.models.ac.offload.simulated_host``): how plans that offload are measured on the
    CPU, whose device has no host of its own (the record's ``memory_method`` says fake)."""
    estimated = dataclasses.replace(flavor, cpu_mode="estimate")

    def measure(variant: str) -> Measurement:
        with simulated_host():
            return measure_variant(estimated, variant, device)
    return measure


class BlockPlanner:
    """Per-block plans for one flavor and attention on one device: the figures measured once
    (``ac_bench.blockplan.measure_figures``), any budget solved, the chosen plan measured
    through ``measure`` (a variant name -> its record; default ``measure_variant``, and on the
    CPU with offload ``simulated_measure``). ``offload_flops_per_byte``: the offloading choices
    join the space at that cost per byte (``blockplan.offload_cost``); ``host_budget_bytes``:
    offload at most this much."""

    def __init__(self, flavor: Flavor, attention: str, device: str = "cpu",
                 measure: Callable[[str], Measurement] | None = None,
                 offload_flops_per_byte: int | None = None, host_budget_bytes: int | None = None) -> None:
        self.flavor, self.attention, self.device = flavor, attention, device
        self.offload_flops_per_byte, self.host_budget_bytes = offload_flops_per_byte, host_budget_bytes
        simulated = offload_flops_per_byte is not None and str(device).startswith("cpu")
        self.measure = measure or (simulated_measure(flavor, device) if simulated else
                                   (lambda variant: measure_variant(flavor, variant, device)))
        self._figures: RegionFigures | None = None

    @property
    def figures(self) -> RegionFigures:
        if self._figures is None:
            self._figures = measure_figures(self.flavor, self.attention, self.device, self.measure,
                                            self.offload_flops_per_byte)
        return self._figures

    def solve(self, budget_bytes: int) -> Solution:
        return solve(self.figures, budget_bytes, host_budget_bytes=self.host_budget_bytes)

    def plan(self, budget_bytes: int, retries: int = 3) -> BlockPlan:
        """The solver's plan for ``budget_bytes``, measured, its record carrying the predicted peak
        (``predicted_peak_bytes``: the gate fails where the measured peak moves away from it).
        Where the measurement exceeds the
        budget (the model is exact on the CPU for every plan the tests measure, of both families;
        on CUDA a plan measured a few MiB off), the budget given to the solver is lowered by the
        miss and it is solved again, up to ``retries`` times; then NothingFits."""
        target, misses = budget_bytes, {}
        for _ in range(retries + 1):
            solution = self.solve(target)
            policy = BlockPlanAC.of(solution.blocks)
            # The record carries the prediction it is measured against (gated with it).
            record = dataclasses.replace(self.measure(f"{policy.name}-{self.attention}"),
                                         predicted_peak_bytes=solution.prediction.peak_bytes)
            if record.peak_bytes is not None and record.peak_bytes <= budget_bytes:
                return BlockPlan(self.flavor, self.attention, budget_bytes, solution, policy, record,
                                 self.measure(f"none-{self.attention}"), misses)
            misses[policy.name] = record.peak_bytes
            if record.peak_bytes is None:
                break
            target -= record.peak_bytes - budget_bytes
        raise NothingFits(f"no per-block plan measured within {budget_bytes} B for {self.flavor.name} with {self.attention} "
                          f"attention: {', '.join(f'{n} measured {b} B' for n, b in misses.items())}")
