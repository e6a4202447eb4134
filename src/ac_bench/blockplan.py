"""Per-block plans (``blocks_...``, ``ac_bench.models.ac.blocks``): their figures, measured once
per region kind, and the step peak of any plan predicted from them.

**The space.** Each of the ``depth`` blocks takes one of fifteen choices (``BLOCK_CHOICES``): per
sublayer (attention, MLP) nothing, full recompute or selective (``sac``'s save list; for attention
also with its output P·V saved), or the whole layer as one region, full or selective. With sdpa
the fused kernel has no batched matmul, so the P·V choices are those without it and are left
out: eleven choices (``space``). 15^depth plans with eager attention: 3,375 at ``tiny``, 50,625
at ``small``, 1.3e14 at ``seed``; 11^depth with sdpa. Given a cost per offloaded byte
(``offload_cost``), nine choices join: ``lo``, the whole layer offloaded to host memory, and
a sublayer offloaded next to any choice of the other (``on``, ``oo``, ``fo``, ...; seven with
sdpa, which has no ``po``): 24 choices with eager attention, 19 with sdpa. They recompute
nothing in what they offload; what it costs is the bytes it moves, out in the forward and back
in the backward (``save_on_cpu`` copies on the compute stream, so the copies
are not overlapped: FLOPs of recompute that take as long as the two copies of a byte). The
planner then minimises recompute FLOPs plus that cost per offloaded byte, optionally under a
host-memory budget.

**The figures, measured.** For each choice c, one step of the plan that gives every block c is
measured on a copy of the flavor four blocks deep (a three-block flavor's too;
``ac_bench.probes.blocks.block_timeline``; on fake tensors on the CPU, where they give the bytes
and FLOPs of real ones): one step per choice, 5 to 15 s at ``seed``. The four blocks give the
position classes a block can hold: the first (its input is the model's, which needs no gradient),
the second (in the llama family it keeps one hidden-sized tensor more than the blocks after it),
an interior one, the last (the gradient of its output is the loss's). Per class p and choice c
they give:

- ``kept`` K_p(c): the bytes the block adds by the end of its forward (its output included; its
  input is counted by the block before, or is the model's input);
- ``forward`` F_p(c): the peak during its forward above what the blocks before it keep;
- ``backward`` Q_p(c): the peak during its backward (recomputation included) above what the
  blocks before it keep, with the gradients of the blocks after it already allocated;
- ``tail`` E(c) and ``head`` H(c) (last block only): the peak between its forward and its
  backward (what follows the blocks, the loss and its backward) above what every block keeps,
  and what ``forward_kept_bytes`` adds to what the blocks keep (what follows them, less the
  model's output);
- ``recompute_flops`` R_p(c): the FLOPs counted in its backward less those of choice ``nn``.

**The peak, modelled as it is measured.** With C_i = K_0 + ... + K_i (what blocks 0..i keep)
and G the bytes of one block's gradients (its parameters'), a plan's step peak is

    max(other, B + max_i (C_{i-1} + F_i), B + C_{d-1} + E, B + max_i (C_{i-1} + Q_i + s_i * G))

where ``other`` is the peak of ``zero_grad`` and of the optimizer step (the same for every
plan), B the bytes allocated when the forward starts (the resident state less the gradients),
and s_i = (d - 1 - i) less the number of blocks after position i's class in the measured copy:
block i's backward runs with the gradients of the d - 1 - i blocks after it allocated.
``other`` and B come from one measured step of ``none`` at the flavor's depth. The peak can sit
in any block's backward, not only the last's: a block that checkpoints keeps less than its
gradients take (at ``seed`` a fully recomputed layer keeps 4 MiB, its gradients take 6 MiB), so
with enough of them the peak moves towards block 0. The prediction is exact to the byte on the
CPU (MemTracker counts storage bytes) for every plan of the notebook's family the tests measure
(the benchmark and its self-tests: ``tiny``, ``small`` at 4 and 6 blocks, ``seed``; docs/planner.md).
The llama family needs one more term: a block whose attention is not checkpointed does not keep
its input (its RMSNorm saves a float32 copy), which is freed when its forward has returned, so
what block i adds depends on block i-1's choice too (``RegionFigures.handed_on``: D(c), the
bytes so freed; block i's K, F and Q get D(c_i) - D(c_{i-1}) from block 2 on). Without that term
mixed plans at ``llama3-8b-4l`` measured one hidden-state tensor (64 MiB) away from the
prediction, either way; with it every plan whose blocks alternate two of the eleven sdpa choices
measures as predicted (docs/planner.md). ``ac_bench.milp.BlockPlanner.plan`` still
measures the chosen plan and solves again below a miss. The recompute FLOPs of a plan are the
sum of its blocks' R (exact for both families).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ac_bench.models import BLOCK_CHOICES, BlockPlanAC, Flavor
from ac_bench.models.ac.blocks import OFFLOAD_CHOICES
from ac_bench.models.ac.offload import simulated_host
from ac_bench.probes.blocks import BlockTimeline, block_timeline
from ac_bench.record import Measurement, measure_variant

#: The position classes of a block: the first, the second, the ones after it up to the last, the
#: last. The second is a class of its own: in the llama family it keeps one hidden-sized tensor
#: more than the blocks after it (measured at llama3-8b-4l; the notebook's block keeps alike).
POSITIONS: tuple[str, ...] = ("first", "second", "interior", "last")
#: The figures are measured on a copy this deep (or the flavor's depth, where that is 3).
CALIBRATION_DEPTH = 4
MIN_DEPTH = 3


def space(attention: str, offload: bool = False) -> tuple[str, ...]:
    """The choices planned over: every one, less those saving P·V (``p``) with sdpa, whose fused
    kernel has no batched matmul (there they are the ``s`` choices again), and less the
    offloading ones (``OFFLOAD_CHOICES``: ``o``, ``lo``) unless ``offload``."""
    return tuple(c for c in BLOCK_CHOICES if (attention != "sdpa" or "p" not in c)
                 and (offload or c not in OFFLOAD_CHOICES))


def position(block: int, depth: int) -> str:
    """``first``, ``second``, ``interior`` or ``last`` (``second`` before ``last``: at depth 3
    block 1 is both the second and the only interior one)."""
    return "first" if block == 0 else "last" if block == depth - 1 else "second" if block == 1 else "interior"


@dataclass(frozen=True)
class ChoiceFigures:
    """One choice at one position class, measured (bytes, FLOPs; see the module docstring)."""

    kept: int
    forward: int
    backward: int
    tail: int
    recompute_flops: int
    #: Last block only: what ``forward_kept_bytes`` adds to what the blocks keep (what follows the
    #: last block in the forward, a final norm say, less the model's output).
    head: int = 0
    #: Bytes the block sends to host memory in its forward and brings back in its backward
    #: (the offloading choices, ``o`` and ``lo``; 0 for every other).
    offloaded: int = 0


@dataclass(frozen=True)
class Prediction:
    """A plan's predicted figures: step peak (bytes), activation peak (above the bytes
    allocated when the forward starts), ``forward_kept_bytes`` (the output excluded, as the
    record counts it), recompute FLOPs, where the peak is (``backward of block 3``), the bytes
    offloaded to host memory (each moved twice: out in the forward, back in the backward) and
    the cost the planner minimises: recompute FLOPs plus ``offload_flops_per_byte`` per
    offloaded byte (``RegionFigures``)."""

    peak_bytes: int
    activation_peak_bytes: int
    kept_bytes: int
    recompute_flops: int
    peak_at: str
    offloaded_bytes: int = 0
    cost: int = 0


@dataclass(frozen=True)
class RegionFigures:
    """Everything a plan's prediction needs, for one flavor (``depth`` blocks) and attention."""

    flavor: str
    attention: str
    depth: int
    before_forward: int
    other_peak: int
    gradient_bytes_per_block: int
    #: (position class, choice) -> figures.
    choices: dict[tuple[str, str], ChoiceFigures]
    #: Per position class, how many blocks followed it in the copy its figures were measured on.
    after: dict[str, int]
    #: Per choice c, D(c): the bytes of its input (the block before's output) a block with choice
    #: c does not keep, freed when its forward has returned, so counted at the start of the next
    #: block's figures (``handed_on``). K, F and Q of the ``interior`` and ``last`` classes were
    #: measured after a block with the same choice; for block i >= 2 they are corrected by
    #: D(c_i) - D(c_{i-1}). D(c) = K_second(c) - K_interior(c), as measured: nothing is freed in
    #: the second block's figures, since the first block's input, the model's, is never freed.
    #: Llama family: one hidden-state tensor (64 MiB at ``llama3-8b-4l``) where attention is not
    #: checkpointed (its RMSNorm saves a float32 copy, not the input); both families: one
    #: residual-stream tensor where the layer or its attention is offloaded (``lo``, ``o?``: the
    #: input goes to the host); 0 otherwise (the notebook family's LayerNorm saves its input).
    #: Empty (0 for every choice) for figures measured on three blocks (before 2026-11-30).
    handed_on: dict[str, int] = dataclasses.field(default_factory=dict)
    #: What one byte offloaded costs, in FLOPs of recompute it is weighed against (out in the
    #: forward and back in the backward, both counted; ``offload_cost``). None: no offload choice
    #: was measured.
    offload_flops_per_byte: int | None = None

    @property
    def space(self) -> tuple[str, ...]:
        """The choices these figures cover, in ``BLOCK_CHOICES`` order."""
        return tuple(c for c in BLOCK_CHOICES if ("first", c) in self.choices)

    def cost(self, recompute_flops: int, offloaded_bytes: int) -> int:
        """What the planner minimises: recompute FLOPs plus ``offload_flops_per_byte`` per offloaded byte."""
        return recompute_flops + (self.offload_flops_per_byte or 0) * offloaded_bytes

    def of(self, block: int, choice: str) -> ChoiceFigures:
        return self.choices[(position(block, self.depth), choice)]

    def neighbour_shift(self, block: int, blocks: tuple[str, ...] | list[str]) -> int:
        """Bytes to add to block ``block``'s K, F and Q for the choice of the block before it
        (``handed_on``): D(c_i) - D(c_{i-1}) from block 2 on, 0 before."""
        if block < 2:
            return 0
        return self.handed_on.get(blocks[block], 0) - self.handed_on.get(blocks[block - 1], 0)

    def backward_shift(self, block: int) -> int:
        """Bytes of the gradients of the blocks after ``block`` beyond those the calibration saw."""
        return (self.depth - 1 - block - self.after[position(block, self.depth)]) * self.gradient_bytes_per_block

    def predict(self, blocks: tuple[str, ...] | list[str]) -> Prediction:
        """The figures of the plan giving block i the choice ``blocks[i]``."""
        if len(blocks) != self.depth:
            raise ValueError(f"a plan for {self.flavor} needs {self.depth} block choices, got {len(blocks)}")
        kept_before, worst, where, flops, offloaded = 0, -1, "", 0, 0
        for i, choice in enumerate(blocks):
            f, shift = self.of(i, choice), self.neighbour_shift(i, blocks)
            for value, label in ((kept_before + shift + f.forward, f"forward of block {i}"),
                                 (kept_before + shift + f.backward + self.backward_shift(i), f"backward of block {i}")):
                if value > worst:
                    worst, where = value, label
            kept_before += f.kept + shift
            flops += f.recompute_flops
            offloaded += f.offloaded
        tail = kept_before + self.of(self.depth - 1, blocks[-1]).tail
        if tail > worst:
            worst, where = tail, "between forward and backward"
        peak = self.before_forward + worst
        if self.other_peak > peak:
            peak, where = self.other_peak, "zero_grad or the optimizer step"
        return Prediction(peak, worst, kept_before + self.of(self.depth - 1, blocks[-1]).head, flops, where,
                          offloaded, self.cost(flops, offloaded))


def figures_from_timelines(flavor: Flavor, attention: str, timelines: dict[str, BlockTimeline],
                           none: Measurement, offload_flops_per_byte: int | None = None) -> RegionFigures:
    """``RegionFigures`` from the shallow copy's timelines of every choice and the ``none``
    record at the flavor's depth (its resident state and optimizer-step peak)."""
    some = timelines["nn"]
    gradient_bytes = some.block_parameter_bytes
    measured_depth = len(some.forward_end)
    after = {position(i, measured_depth): measured_depth - 1 - i for i in range(measured_depth)}
    choices = {}
    for choice, t in timelines.items():
        before = (0,) + t.forward_end[:-1]
        for i in range(measured_depth):
            p = position(i, measured_depth)
            choices[(p, choice)] = ChoiceFigures(
                kept=t.forward_end[i] - before[i], forward=t.forward_peak[i] - before[i],
                backward=t.backward_peak[i] - before[i], tail=t.tail_peak - t.forward_end[-1] if p == "last" else 0,
                recompute_flops=t.backward_flops[i] - some.backward_flops[i],
                head=t.after_forward - t.forward_end[-1] - t.output_bytes if p == "last" else 0,
                offloaded=t.offloaded[i] if t.offloaded else 0)
    gradients = flavor.depth * gradient_bytes + some.other_parameter_bytes
    handed_on = {c: choices[("second", c)].kept - choices[("interior", c)].kept for c in timelines
                 if ("interior", c) in choices}
    return RegionFigures(flavor.name, attention, flavor.depth, before_forward=none.resident_bytes - gradients,
                         other_peak=max(none.resident_bytes, none.optimizer_step_peak_bytes),
                         gradient_bytes_per_block=gradient_bytes, choices=choices,
                         after=after, handed_on=handed_on, offload_flops_per_byte=offload_flops_per_byte)


def measure_figures(flavor: Flavor, attention: str, device: str = "cpu",
                    measure: Callable[[str], Measurement] | None = None,
                    offload_flops_per_byte: int | None = None) -> RegionFigures:
    """Measure the figures: steps of a four-block copy (of a three-block flavor too),
    one per choice of ``space(attention)``, and ``none`` at the flavor's depth through
    ``measure`` (a variant name -> its record; default ``measure_variant``). With
    ``offload_flops_per_byte`` (``offload_cost``) the offloading choices (``o``, ``lo``) join
    the space: on the CPU their steps run on fake tensors under ``simulated_host`` (what a GPU's memory does;
    the CPU has no host of its own), on a GPU for real. ValueError below three blocks or for a
    negative cost."""
    if offload_flops_per_byte is not None and offload_flops_per_byte < 0:
        raise ValueError(f"the cost of an offloaded byte must be >= 0 FLOPs, got {offload_flops_per_byte}")
    if flavor.depth < MIN_DEPTH:
        raise ValueError(f"flavor {flavor.name} has {flavor.depth} blocks; per-block plans need at least "
                         f"{MIN_DEPTH} (a first, an interior and a last block)")
    depth = CALIBRATION_DEPTH  # four blocks even for a three-block flavor: the interior one gives handed_on
    measure = measure or (lambda variant: measure_variant(flavor, variant, device))
    shallow = dataclasses.replace(flavor, depth=depth)
    fake = torch.device(device).type == "cpu"  # exact there, and no compute
    offload = offload_flops_per_byte is not None
    with simulated_host() if offload and fake else contextlib.nullcontext():
        timelines = {c: block_timeline(shallow, attention, BlockPlanAC.of((c,) * depth), device, fake=fake)
                     for c in space(attention, offload)}
    return figures_from_timelines(flavor, attention, timelines, measure(f"none-{attention}"), offload_flops_per_byte)


#: Dense bf16 FLOP/s and host-link bytes/s per direction from the vendors' datasheets (H100 SXM
#: and H200: 989.4 TFLOP/s, PCIe 5.0 x16: 64 GB/s; A100 SXM: 312 TFLOP/s, PCIe 4.0 x16: 32 GB/s),
#: not measured: a measured link rate (``scripts/gpu-check``) gives a truer cost.
OFFLOAD_PRESETS: dict[str, tuple[float, float]] = {"h100": (989.4e12, 64e9), "h200": (989.4e12, 64e9),
                                                   "a100": (312e12, 32e9)}


def offload_cost(flops_per_second: float, link_bytes_per_second: float) -> int:
    """FLOPs of recompute that take as long as one byte offloaded and brought back (two copies
    over the host link, not overlapped with compute): ``round(2 * flops / link)``. The H200
    preset gives 30,919. ValueError for a rate that is not positive."""
    if not (flops_per_second > 0 and link_bytes_per_second > 0):
        raise ValueError(f"an offload cost needs a positive FLOP rate and link rate, got {flops_per_second} FLOP/s "
                         f"and {link_bytes_per_second} B/s")
    return round(2 * flops_per_second / link_bytes_per_second)


def every_plan(figures: "RegionFigures") -> Iterator[tuple[str, ...]]:
    """Every plan of the figures' space (len(space)^depth)."""
    return itertools.product(figures.space, repeat=figures.depth)


def regions(choice: str) -> int:
    """Checkpointed (or offloaded) regions of one block's choice: ``ff`` 2, ``fn`` 1, ``on`` 1, ``lf`` 1, ``lo`` 1, ``nn`` 0."""
    return 1 if choice[0] == "l" else sum(letter != "n" for letter in choice)


def brute_force(figures: RegionFigures, budget_bytes: int,
                host_budget_bytes: int | None = None) -> tuple[tuple[str, ...], Prediction] | None:
    """The exhaustive answer: over every plan predicted to fit (and to offload at most
    ``host_budget_bytes``), the lowest cost (recompute FLOPs, plus the offloaded bytes'), then
    the fewest checkpointed or offloaded regions (``regions``; None: nothing fits).
    len(space)^depth predictions: for tiny and small."""
    best = None
    for blocks in every_plan(figures):
        p = figures.predict(blocks)
        key = (p.cost, sum(regions(c) for c in blocks))
        if host_budget_bytes is not None and p.offloaded_bytes > host_budget_bytes:
            continue
        if p.peak_bytes <= budget_bytes and (best is None or key < best[0]):
            best = (key, blocks, p)
    return None if best is None else (best[1], best[2])
