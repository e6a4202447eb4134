"""A memory budget in, a checkpointing plan out: the fewest recomputed FLOPs that fit.

The search space: ``plan_a{A}_m{M}`` (``ac_bench.models.ac.plan``), attention checkpointed in the first
A blocks and the MLP in the first M, for every A, M in 0..depth: (depth+1)^2 plans, all
enumerated. Why counts and first blocks suffice: every attention sublayer costs the same to
recompute and keeps the same bytes when checkpointed wherever it sits (likewise the MLP), so
FLOPs and kept bytes depend on the counts only; where they sit moves only *when* backward
recomputes them, and the first blocks are recomputed last, when the rest has been freed
(the self-test compares against every subset of sublayers at the ``tiny`` flavor).

Why not greedy by FLOPs per byte saved: it is not optimal here, for two reasons. The two
sublayer types are items of a knapsack with two sizes (at ``seed`` with eager attention an
attention sublayer saves 152 MiB for 40.8 GFLOP, 0.27 GFLOP/MiB, and an MLP 20 MiB for
8.6 GFLOP, 0.43 GFLOP/MiB; with sdpa both save 20 MiB and the MLP is the better buy by 4.7x),
so filling with the better ratio first overshoots budgets that a mix meets for less (eager,
1 GiB: greedy takes attention in 11 blocks for 448.8 GFLOP, the plan attention in 10 and the
MLP in 4 for 442.4). And the peak is not the kept bytes: checkpointing the last block, the
first one backward reaches, rebuilds its activations at once, so it lowers kept bytes but not
the peak (plan_a11_m11 and plan_a12_m12 peak alike); greedy takes it when it comes in order.
Over 101 budgets from the smallest feasible to ``none``'s peak at ``seed``, greedy recomputes
more than the planner at 56 (eager) and 53 (sdpa); for example eager at 0.8 GiB:
plan_a12_m7, 549.8 GFLOP, against plan_a11_m7, 509.0 (8% more). Enumeration is exact and small
((depth+1)^2 = 169 plans for 12 blocks), so the planner enumerates.

Figures, per plan, from per-region figures (``ac_bench.regions.RegionProfile``, injectable as
``profile``): the family's analytic model where it has one (``from_analytic``, exact on the
CPU), else measured from one forward of ``none`` (``measure_regions``): kept bytes K and
recompute FLOPs. The step's peak is ``max(other phases, before_forward + K + T)``,
where before_forward is the resident state less the gradients (freed by ``zero_grad``) and T
is backward's transient at the last block, which is the same for every plan in one of four
classes (is the last block's attention checkpointed? its MLP?). T and the other phases' peak
are measured once per class on the flavor (fake tensors for estimated flavors: exact, no
compute), so a plan's peak is predicted without measuring it; the chosen plan is then
measured and must fit (a plan whose measurement does not fit is skipped, and says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ac_bench import analytic
from ac_bench.models import Flavor, PlanAC, resolve_dtype
from ac_bench.outputs import bytes_text, flops_text, gib_at_least, gib_text
from ac_bench.record import Measurement, measure_variant
from ac_bench.regions import RegionProfile, region_profile

GIB = 2 ** 30


class InfeasibleBudget(ValueError):
    """No plan fits; the message names the smallest feasible budget."""


@dataclass(frozen=True)
class Candidate:
    """One plan with its figures (kept bytes, recompute FLOPs) and predicted peak."""

    policy: PlanAC
    kept_bytes: int
    recompute_flops: int
    predicted_peak_bytes: int

    @property
    def name(self) -> str:
        return self.policy.name


@dataclass
class Plan:
    """The planner's answer: the chosen plan, its measurement and every plan considered."""

    flavor: Flavor
    attention: str
    budget_bytes: int
    chosen: Candidate
    record: Measurement
    candidates: list[Candidate]
    #: Plans predicted to fit that measured above the budget (name -> measured peak).
    rejected_on_measurement: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        c, r = self.chosen, self.record
        depth = self.flavor.depth
        return (f"{self.flavor.name} {self.attention}, budget {gib_text(self.budget_bytes)} GiB "
                f"({self.budget_bytes} B): {c.name}-{self.attention}, checkpointing {c.policy.describe(depth)}; "
                f"{r.peak_how} peak {bytes_text(r.peak_bytes)} ({r.peak_bytes} B, predicted {c.predicted_peak_bytes}), "
                f"kept {bytes_text(r.forward_kept_bytes)}, recompute {flops_text(c.recompute_flops)} "
                f"({c.recompute_flops / max(1, r.flops - c.recompute_flops):.1%} of the step)")


def parse_budget(text: str) -> int:
    """``1GiB``, ``1.5GiB``, ``800MiB``, ``123456`` (bytes) -> bytes; a ValueError says the format."""
    units = {"GiB": 2 ** 30, "MiB": 2 ** 20, "KiB": 2 ** 10, "B": 1, "": 1}
    s = str(text).strip()
    for unit in ("GiB", "MiB", "KiB", "B", ""):
        if s.endswith(unit):
            number = s[: len(s) - len(unit)] if unit else s
            try:
                value = float(number)
            except ValueError:
                break
            if not math.isfinite(value) or value <= 0:
                break
            return int(value * units[unit])
    raise ValueError(f"budget {text!r} is not a positive size; write e.g. 1GiB, 1.5GiB, 800MiB or a byte count")


class Planner:
    """Plans for one flavor and attention on one device; measurements are cached. ``profile``:
    the per-region bytes and FLOPs plans are composed from (``ac_bench.regions.region_profile``
    when not given: the analytic model's, else measured)."""

    def __init__(self, flavor: Flavor, attention: str, device: str = "cpu",
                 measure: Callable[[str], Measurement] | None = None, profile: RegionProfile | None = None) -> None:
        self.flavor, self.attention, self.device = flavor, attention, device
        self.profile = profile or region_profile(flavor, attention, device)
        self._measure = measure or (lambda variant: measure_variant(flavor, variant, device))
        self._cache: dict[str, Measurement] = {}
        dtype = resolve_dtype(flavor, device)
        self.shape = analytic.Shape.of(flavor, dtype, torch.device(device).type)
        self.depth = flavor.depth
        self._transients: dict[tuple[bool, bool], int] | None = None

    def measure(self, policy: PlanAC | str) -> Measurement:
        name = policy if isinstance(policy, str) else policy.name
        if name not in self._cache:
            self._cache[name] = self._measure(f"{name}-{self.attention}")
        return self._cache[name]

    def _calibrate(self) -> None:
        """Backward's transient per class and the peak of the other phases, from four plans."""
        d = self.depth
        self._transients = {}
        other = 0
        for last_attn, last_mlp in ((False, False), (True, False), (False, True), (True, True)):
            policy = PlanAC.of(d if last_attn else 0, d if last_mlp else 0)
            r = self.measure(policy)
            before_forward = r.resident_bytes - self.profile.parameter_bytes
            forward_backward_peak = before_forward + r.activation_peak_bytes
            self._transients[(last_attn, last_mlp)] = r.activation_peak_bytes - r.forward_kept_bytes
            if r.peak_bytes > forward_backward_peak:  # zero_grad or the optimizer step
                other = max(other, r.peak_bytes)
            self._before_forward = before_forward
        self._other_peak = other

    def candidate(self, policy: PlanAC) -> Candidate:
        if self._transients is None:
            self._calibrate()
        kept = self.profile.kept_bytes(policy)
        transient = self._transients[(policy.attn_blocks == self.depth, policy.mlp_blocks == self.depth)]
        predicted = max(self._other_peak, self._before_forward + kept + transient)
        return Candidate(policy, kept, self.profile.recompute_flops(policy), predicted)

    def candidates(self) -> list[Candidate]:
        """Every plan, cheapest first (ties: fewer kept bytes, then fewer checkpointed sublayers)."""
        plans = [self.candidate(PlanAC.of(a, m)) for a in range(self.depth + 1) for m in range(self.depth + 1)]
        return sorted(plans, key=lambda c: (c.recompute_flops, c.kept_bytes, c.policy.attn_blocks + c.policy.mlp_blocks,
                                            c.name))

    def choose(self, budget_bytes: int) -> Candidate | None:
        """The cheapest plan predicted to fit, without measuring it (None: none is predicted to)."""
        return next((c for c in self.candidates() if c.predicted_peak_bytes <= budget_bytes), None)

    def sublayer_economics(self) -> dict[str, dict[str, float]]:
        """Per sublayer type, for one block (not block 0): bytes saved by checkpointing it,
        FLOPs recomputed, and FLOPs per MiB saved (lower is the better buy)."""
        out = {}
        for sublayer, policy in (("attn", PlanAC.of(2, 0)), ("mlp", PlanAC.of(0, 2))):
            one = PlanAC.of(1, 0) if sublayer == "attn" else PlanAC.of(0, 1)
            saved = self.profile.kept_bytes(one) - self.profile.kept_bytes(policy)
            flops = self.profile.recompute_flops(policy) - self.profile.recompute_flops(one)
            out[sublayer] = {"bytes_saved": saved, "recompute_flops": flops,
                             "flops_per_mib": flops / (saved / 2 ** 20)}
        return out

    def plan(self, budget_bytes: int) -> Plan:
        """The cheapest plan whose measured peak fits ``budget_bytes``, or InfeasibleBudget."""
        if not (isinstance(budget_bytes, int) and budget_bytes > 0):
            raise ValueError(f"budget must be a positive number of bytes, got {budget_bytes!r}")
        cands = self.candidates()
        rejected: dict[str, int] = {}
        for c in cands:
            if c.predicted_peak_bytes > budget_bytes:
                continue
            record = self.measure(c.policy)
            if record.peak_bytes <= budget_bytes:
                return Plan(self.flavor, self.attention, budget_bytes, c, record, cands, rejected)
            rejected[c.name] = record.peak_bytes
        # Predictions are exact on the CPU. On CUDA the resident state and the allocator's rounding
        # move a plan's peak by a few MiB either way, so a plan predicted just over the budget may
        # measure under it: before answering that nothing fits, measure every plan predicted
        # lowest (cheapest first) and name the smallest of their measured peaks. Where one of
        # them measures exactly as predicted (every plan on the CPU), the prediction holds and
        # the rest are not measured: on a measured flavor each costs a real step.
        lowest = min(c.predicted_peak_bytes for c in cands)
        floor, measured_floor = [c for c in cands if c.predicted_peak_bytes == lowest], []
        for c in floor:
            record = self.measure(c.policy)
            if record.peak_bytes <= budget_bytes:
                return Plan(self.flavor, self.attention, budget_bytes, c, record, cands, rejected)
            rejected[c.name] = record.peak_bytes
            measured_floor.append(c)
            if record.peak_bytes == c.predicted_peak_bytes:
                break
        smallest = min(measured_floor, key=lambda c: (self.measure(c.policy).peak_bytes, c.recompute_flops))
        measured = self.measure(smallest.policy).peak_bytes
        raise InfeasibleBudget(
            f"no checkpointing plan fits {gib_text(budget_bytes)} GiB ({budget_bytes} B) for {self.flavor.name} "
            f"with {self.attention} attention: the smallest feasible budget is {gib_at_least(measured, 3)} GiB "
            f"({measured} B, {smallest.name}: checkpointing {smallest.policy.describe(self.depth)})")
