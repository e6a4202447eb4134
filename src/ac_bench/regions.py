"""What each checkpointable region keeps and costs, measured from one forward without checkpointing.

A *region* is what a region policy hands to ``torch.utils.checkpoint``: a sublayer of a block
(``(block, "attn")``, ``(block, "mlp")``: the ``full``, ``attn``, ``mlp``, ``every_N`` and
``plan_aA_mM`` policies) or a whole block (``(block, "layer")``: ``whole_layers``). One forward
of the ``none`` variant is observed with

- torch's ``FlopCounterMode``, whose ``ModuleTracker`` attributes each op's FLOPs to every
  module whose forward is running (``torch/utils/flop_counter.py``, ``_count_flops``: ``for par
  in set(self.mod_tracker.parents)``), so each region's forward FLOPs are its module's count;
- ``saved_tensors_hooks`` whose pack hook records, for every tensor autograd saves, its storage
  and the regions whose forward is running (the same ``ModuleTracker.parents``); parameters,
  buffers and the step's input are left out, as ``ac_bench.probes.memory.SavedTensorCounter``
  leaves them out (they exist before the forward);
- a forward pre-hook on each region's module, which records its tensor inputs: positional ones,
  which non-reentrant ``torch.utils.checkpoint`` saves for the recomputation through the
  surrounding saved-tensor hooks (``_CheckpointFrame.save_inputs``), and keyword ones (or nested
  in a container), which it keeps as Python objects in the recomputation's closure, out of the
  hooks' sight.

From these (``RegionProfile``), any region policy's figures compose without an analytic model:

- the bytes kept at the end of the forward are the storages some op saves *outside* every
  checkpointed region, together with the checkpointed regions' inputs, counted once each:
  what ``none`` keeps, less what the checkpointed regions keep inside, plus their inputs
  (``kept_bytes``; with ``held=False``, what saved-tensor hooks can see: ``saved_bytes``);
- the recomputed FLOPs are, per checkpointed region, its forward's FLOPs up to the last tensor
  it saves: non-reentrant checkpointing stops recomputing once every saved tensor is back
  (early stop, ``_recomputation_hook``'s ``_StopRecomputationError``, on by default), and
  autograd saves an op's inputs before its kernel runs and its outputs after. So the pack hook
  reads the region's FLOP count at each save; the last reading is what backward recomputes
  (``recompute_flops``), below the region's whole forward (``forward_flops``) by the ops after
  its last save (the last linear layer's matmul, in every family here).

``from_analytic`` fills the same object from a family's analytic model (``ac_bench.analytic``),
one lump per sublayer, so that the planner reads either (``ac_bench.planner``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

import ac_bench.probes.flops  # noqa: F401  (registers the suite's FLOP formulas: CPU flash SDPA, grouped-query SDPA)
from ac_bench import analytic
from ac_bench.models import Flavor, LayerAC, Policy, RegionAC, SelectiveAC, family_of, get_policy, resolve_dtype
from ac_bench.models.ac.base import sublayer_attribute
from ac_bench.record import build_training, is_estimate

#: A region: ``(block, part)``, ``part`` a sublayer (``attn``, ``mlp``) or ``LAYER`` (the whole block).
Region = tuple[int, str]
LAYER = "layer"


class NotARegionPolicy(ValueError):
    """The policy does not checkpoint whole regions (a selective, sequential, offload or
    compiled policy), so its figures do not compose from per-region ones."""


def policy_regions(policy: Policy | str, depth: int) -> frozenset[Region]:
    """The regions ``policy`` checkpoints in a model of ``depth`` blocks: a region or plan
    policy's sublayers (``RegionAC.regions``), a layer policy's blocks; NotARegionPolicy for
    any other kind (a selective policy, a ``RegionAC`` too, saves some ops' outputs inside its
    regions; a sequential one checkpoints segments through the model's forward)."""
    policy = get_policy(policy) if isinstance(policy, str) else policy
    if isinstance(policy, RegionAC) and not isinstance(policy, SelectiveAC):
        return frozenset(policy.regions(depth))
    if isinstance(policy, LayerAC):
        return frozenset((b, LAYER) for b in range(0, depth, policy.layer_step))
    raise NotARegionPolicy(f"policy {policy.name!r} ({policy.kind}) does not checkpoint whole regions, so its figures "
                           f"do not compose from per-region ones")


def region_name(region: Region) -> str:
    """``(3, "attn")`` -> ``block 3 attn``; ``(0, "layer")`` -> ``layer 0``."""
    block, part = region
    return f"layer {block}" if part == LAYER else f"block {block} {part}"


@dataclass(frozen=True)
class RegionProfile:
    """The per-region figures of one flavor and attention: storages and FLOPs, from which every
    region policy's kept bytes and recomputed FLOPs compose (``kept_bytes``, ``recompute_flops``).

    ``storage_bytes``: bytes of every storage saved for backward or taken as a region's input
    (by key; parameters, buffers and the step's input excluded). ``saved_under``: per saved
    storage, the sets of regions whose forward was running at each save (``frozenset()``: saved
    outside every region). ``saved_inputs`` / ``held_inputs``: per region, the storages of its
    inputs that a checkpoint saves through saved-tensor hooks (positional tensors) and those it
    holds as Python objects (keyword or nested tensors). ``forward_flops`` /
    ``recompute_flops_by_region``: per region, its forward's FLOPs and those up to its last save
    (FlopCounterMode's convention: 2 per multiply-add, matmul-like ops only). ``parameter_bytes``: the model's parameters. ``source``: ``measured`` (from a
    ``none`` forward, ``measure_regions``) or ``analytic`` (``from_analytic``).
    """

    source: str
    depth: int
    parameter_bytes: int
    storage_bytes: dict[int, int]
    saved_under: dict[int, frozenset[frozenset[Region]]]
    saved_inputs: dict[Region, frozenset[int]]
    held_inputs: dict[Region, frozenset[int]]
    forward_flops: dict[Region, int]
    recompute_flops_by_region: dict[Region, int]

    def regions(self) -> tuple[Region, ...]:
        """Every region these figures describe, in forward order."""
        return tuple(self.forward_flops)

    def _checked(self, regions: Iterable[Region] | Policy | str) -> frozenset[Region]:
        chosen = (policy_regions(regions, self.depth) if isinstance(regions, (Policy, str))
                  else frozenset(regions))
        unknown = sorted(chosen - set(self.forward_flops))
        if unknown:
            raise ValueError(f"{self.source} region figures have no {', '.join(map(region_name, unknown))} "
                             f"(they describe {len(self.forward_flops)} regions of {self.depth} blocks)")
        nested = sorted(r for r in chosen if r[1] != LAYER and (r[0], LAYER) in chosen)
        if nested:  # a checkpoint inside another keeps its inputs inside the outer one: not composed here
            raise ValueError(f"{', '.join(map(region_name, nested))} inside a checkpointed layer: nested checkpoints "
                             f"do not compose from per-region figures")
        return chosen

    def kept_storages(self, regions: Iterable[Region] | Policy | str, held: bool = True) -> set[int]:
        """The storages kept at the end of the forward with ``regions`` (or a region policy's)
        checkpointed: each saved by some op outside them, and their inputs (``held``: also the
        inputs a checkpoint holds as Python objects, which saved-tensor hooks do not see)."""
        chosen = self._checked(regions)
        kept = {k for k, stacks in self.saved_under.items() if any(not (s & chosen) for s in stacks)}
        for region in chosen:
            kept |= self.saved_inputs[region]
            if held:
                kept |= self.held_inputs[region]
        return kept

    def kept_bytes(self, regions: Iterable[Region] | Policy | str, held: bool = True) -> int:
        """Bytes kept for backward at the end of the forward with ``regions`` checkpointed
        (``forward_kept_bytes``; with ``held=False`` what saved-tensor hooks see, ``saved_bytes``)."""
        return sum(self.storage_bytes[k] for k in self.kept_storages(regions, held))

    def recompute_flops(self, regions: Iterable[Region] | Policy | str) -> int:
        """FLOPs backward recomputes with ``regions`` checkpointed: each region's forward up to its
        last save, or its whole forward for a policy that turns the early stop off
        (``LayerAC(early_stop=False)``, torchtitan's ``FullAC``)."""
        policy = get_policy(regions) if isinstance(regions, str) else regions
        per_region = self.forward_flops if getattr(policy, "early_stop", True) is False else self.recompute_flops_by_region
        return sum(per_region[r] for r in self._checked(regions))

    def inside_bytes(self, region: Region) -> int:
        """Bytes that only ``region`` saves (every save of the storage ran inside it): what
        checkpointing it alone stops keeping, before its inputs are added back."""
        return sum(self.storage_bytes[k] for k, stacks in self.saved_under.items()
                   if all(region in s for s in stacks))

    def input_bytes(self, region: Region, held: bool = True) -> int:
        """Bytes of ``region``'s inputs that a checkpoint keeps (``held``: also those it holds as objects)."""
        keys = self.saved_inputs[region] | (self.held_inputs[region] if held else frozenset())
        return sum(self.storage_bytes[k] for k in keys)

    def describe(self, regions: Iterable[Region] | Policy | str) -> str:
        """One line per region of ``regions``: its inside and input bytes, its FLOPs."""
        return "; ".join(
            f"{region_name(r)}: keeps {self.inside_bytes(r):,} B inside, inputs {self.input_bytes(r, False):,} B saved "
            f"+ {self.input_bytes(r) - self.input_bytes(r, False):,} B held, forward {self.forward_flops[r]:,} FLOPs, "
            f"recomputed {self.recompute_flops_by_region[r]:,}"
            for r in sorted(self._checked(regions)))


def region_modules(model: nn.Module, sublayers: Iterable[str]) -> dict[Region, nn.Module]:
    """Each region's module in ``model`` (its ``blocks`` and their sublayers, by the model's
    ``sublayer_attributes``), in forward order: per block, the block, then its sublayers."""
    out: dict[Region, nn.Module] = {}
    for b, block in enumerate(model.blocks):
        out[(b, LAYER)] = block
        for sublayer in sublayers:
            out[(b, sublayer)] = getattr(block, sublayer_attribute(model, sublayer))
    return out


def _tracker_names(model: nn.Module) -> dict[nn.Module, str]:
    """The names ``ModuleTracker`` gives ``model``'s modules: the root's class name, then the
    attribute path (``torch/utils/module_tracker.py``, ``_get_mod_name``)."""
    root = type(model).__name__
    return {m: f"{root}.{path}" if path else root for path, m in model.named_modules()}


def forward_profile(model: nn.Module, x: torch.Tensor, sublayers: Iterable[str]) -> RegionProfile:
    """``RegionProfile`` of one forward of ``model`` (no checkpointing) on ``x``, its graph then
    dropped without a backward (see the module docstring for what is observed and how)."""
    modules = region_modules(model, sublayers)
    names = _tracker_names(model)
    by_name = {names[m]: r for r, m in modules.items()}
    excluded = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers(), x)}
    held: dict[int, torch.UntypedStorage] = {}  # alive until the end: no key is reused meanwhile
    saved_under: dict[int, set[frozenset[Region]]] = {}
    inputs: dict[Region, tuple[set[int], set[int]]] = {r: (set(), set()) for r in modules}
    counter = FlopCounterMode(display=False)
    tracker = counter.mod_tracker
    recompute: dict[Region, int] = dict.fromkeys(modules, 0)

    def flops_of(region: Region) -> int:
        return sum(counter.flop_counts[names[modules[region]]].values())

    def key_of(t: torch.Tensor) -> int | None:
        storage = t.untyped_storage()
        if storage._cdata in excluded:
            return None
        held.setdefault(storage._cdata, storage)
        return storage._cdata

    def pack(t: torch.Tensor) -> torch.Tensor:
        running = frozenset(by_name[n] for n in tracker.parents if n in by_name)
        for region in running:  # every save counts for early stop, parameters' too
            recompute[region] = flops_of(region)
        key = key_of(t)
        if key is not None:
            saved_under.setdefault(key, set()).add(running)
        return t

    def pre_hook(region: Region):
        def hook(module, args, kwargs):
            if names[module] not in tracker.parents:
                raise RuntimeError(f"{region_name(region)}: FlopCounterMode's ModuleTracker does not name "
                                   f"{type(module).__name__} {names[module]!r}; the regions' FLOPs would be lost")
            positional, held_ = inputs[region]
            for a in args:
                if isinstance(a, torch.Tensor) and (k := key_of(a)) is not None:
                    positional.add(k)
            nested = [a for a in args if not isinstance(a, torch.Tensor)] + list(kwargs.values())
            for t in tree_flatten(nested)[0]:
                if isinstance(t, torch.Tensor) and (k := key_of(t)) is not None:
                    held_.add(k)
        return hook

    handles = [m.register_forward_pre_hook(pre_hook(r), with_kwargs=True) for r, m in modules.items()]
    try:
        with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
        del out
    finally:
        for h in handles:
            h.remove()
    return RegionProfile(
        source="measured", depth=len(model.blocks),
        parameter_bytes=sum(p.untyped_storage().nbytes() for p in {p.untyped_storage()._cdata: p
                                                                   for p in model.parameters()}.values()),
        storage_bytes={k: s.nbytes() for k, s in held.items()},
        saved_under={k: frozenset(v) for k, v in saved_under.items()},
        saved_inputs={r: frozenset(p) for r, (p, _) in inputs.items()},
        held_inputs={r: frozenset(h - p) for r, (p, h) in inputs.items()},
        forward_flops={r: flops_of(r) for r in modules},
        recompute_flops_by_region=recompute)


def measure_regions(flavor: Flavor, attention: str, device: str | torch.device = "cpu") -> RegionProfile:
    """The flavor's per-region figures with ``attention``, from one forward of its ``none``
    variant, built as the measured step builds it (seed 0, the flavor's dtype; on fake tensors
    where the flavor is estimated on this device: exact bytes and FLOPs, no compute)."""
    device = torch.device(device)
    with FakeTensorMode() if is_estimate(flavor, device) else contextlib.nullcontext():
        training = build_training(flavor, f"none-{attention}", device)
        return forward_profile(training.model, training.x, family_of(flavor).sublayers)


def from_analytic(flavor: Flavor, attention: str, device: str | torch.device = "cpu") -> RegionProfile:
    """The same figures from the family's analytic model (``ac_bench.analytic``), per sublayer
    (no ``layer`` regions: the analytic model does not compose whole layers): each sublayer of
    block b keeps its input, a storage of one residual-stream activation that the sublayer saves
    (none for block 0's attention, whose input is the step's), and the rest of what it saves as
    one storage; it recomputes ``sublayer_recompute_flops``. ``NotModelled`` for a family without one."""
    device = torch.device(device)
    shape = analytic.Shape.of(flavor, resolve_dtype(flavor, device), device.type)
    counts = analytic.counts(shape)
    sublayers = family_of(flavor).sublayers
    storage_bytes: dict[int, int] = {}
    saved_under: dict[int, frozenset[frozenset[Region]]] = {}
    saved_inputs: dict[Region, frozenset[int]] = {}
    forward, recompute = {}, {}
    for b in range(shape.depth):
        for sublayer in sublayers:
            region = (b, sublayer)
            whole = analytic.sublayer_saved_bytes(shape, sublayer, attention)
            first = region == (0, "attn")  # its input is the step's (``FamilyCounts.input_not_kept_bytes``)
            own = frozenset({frozenset({region})})
            rest = len(storage_bytes)
            storage_bytes[rest] = whole - (counts.input_not_kept_bytes(shape) if first else shape.residual_bytes)
            saved_under[rest] = own
            saved_inputs[region] = frozenset()
            if not first:
                storage_bytes[rest + 1] = shape.residual_bytes
                saved_under[rest + 1] = own
                saved_inputs[region] = frozenset({rest + 1})
            forward[region] = analytic.sublayer_forward_flops(shape, sublayer)
            recompute[region] = analytic.sublayer_recompute_flops(shape, sublayer)
    return RegionProfile(source="analytic", depth=shape.depth, parameter_bytes=analytic.parameter_bytes(shape),
                         storage_bytes=storage_bytes, saved_under=saved_under, saved_inputs=saved_inputs,
                         held_inputs={r: frozenset() for r in saved_inputs}, forward_flops=forward,
                         recompute_flops_by_region=recompute)


def sublayers_only(figures: RegionProfile) -> RegionProfile:
    """``figures`` without the ``layer`` regions (what ``from_analytic`` describes)."""
    keep = [r for r in figures.regions() if r[1] != LAYER]
    return dataclasses.replace(
        figures, saved_under={k: frozenset(frozenset(r for r in s if r[1] != LAYER) for s in v)
                              for k, v in figures.saved_under.items()},
        saved_inputs={r: figures.saved_inputs[r] for r in keep}, held_inputs={r: figures.held_inputs[r] for r in keep},
        forward_flops={r: figures.forward_flops[r] for r in keep},
        recompute_flops_by_region={r: figures.recompute_flops_by_region[r] for r in keep})


def region_profile(flavor: Flavor, attention: str, device: str | torch.device = "cpu") -> RegionProfile:
    """The flavor's per-region figures: its family's analytic model's where it has one
    (``from_analytic``: nothing built or run), else measured (``measure_regions``)."""
    if analytic.not_modelled_reason(flavor) is None:
        return from_analytic(flavor, attention, device)
    return measure_regions(flavor, attention, device)
