"""Memory probes behind one interface: the CUDA caching allocator (``ac_bench.probes.device``), or MemTracker.

A probe measures phases of a training step: the bytes allocated at a phase's start, at any
point inside it (``current``) and the phase's peak. ``MemTrackerProbe`` works on real CPU
tensors and on fake tensors alike.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from ac_bench.probes.device import Phase

#: The methods, recorded as ``memory_method`` with every figure (and CUDA_ALLOCATOR).
MEMTRACKER = "memtracker"
FAKE_MEMTRACKER = "fake-memtracker"

#: MemTracker's categories, named in this suite's words.
CATEGORY_NAMES: dict[str, str] = {
    "Parameter": "parameters",
    "Buffer": "buffers",
    "Gradient": "gradients",
    "Optstate": "optimizer_state",
    "Activation": "activations",
    "Temp": "temporaries",
    "Other": "input",
}


@functools.cache
def compile_aware_mem_tracker_class() -> type:
    """``CompileAwareMemTracker`` (below), defined on first use: importing
    ``torch.distributed._tools.mem_tracker`` takes about a second (it pulls in DTensor and
    inductor's utilities), which every process that never measures (the report, a collect-only
    run, a usage error) would otherwise pay."""
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker

    class CompileAwareMemTracker(MemTracker):
        """MemTracker that lets a compiled model run compiled inside it.

        Dynamo runs a model eagerly while a dispatch mode is on the stack, unless the mode says it
        ignores compile internals: the mode is then off while compiling and on while the compiled
        graph runs, whose ops (with a non-fusing backend such as ``aot_eager_decomp_partition``)
        it sees as usual. Without this, a ``budget_B`` variant would be measured uncompiled.
        """

        #: Higher-order operators come through ``__torch_dispatch__`` like any op, which runs them
        #: and tracks the tensors they return. Without this torch raises NotImplementedError for
        #: the checkpoint's ``run_and_save_rng_state`` in a compiled block (pytorch #120381's
        #: shape): the tracker would break the step it measures.
        supports_higher_order_operators = True

        @classmethod
        def ignore_compile_internals(cls) -> bool:
            return True

        def _update_peak_stats(self, peak_state) -> None:
            """The tracker-wide peak only, as MemTracker's own second loop computes it. MemTracker
            also walks every module it has seen on every op to keep per-module peaks, which this
            suite never reads (``get_tracker_snapshot("peak")`` is the tracker-wide one): that walk
            was half of a fake-tensor measurement at ``seed`` (3.1 of 6.2 s under the profiler)."""
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(snap)

    return CompileAwareMemTracker


class MemTrackerProbe:
    """``torch.distributed._tools.mem_tracker.MemTracker``: exact storage bytes by category.

    Each phase re-enters the tracker, which resets its peak to the current total.
    """

    #: The tracker's categories in this suite's words (the breakdown's keys).
    categories: dict[str, str] = CATEGORY_NAMES

    def __init__(self, device: torch.device, *tracked: nn.Module | torch.optim.Optimizer | torch.Tensor,
                 fake: bool = False) -> None:
        self.device = device
        self.method = FAKE_MEMTRACKER if fake else MEMTRACKER
        self.foreign_bytes = 0
        self.tracker = compile_aware_mem_tracker_class()()
        self.tracker.track_external(*tracked)

    def _total(self, kind: str) -> tuple[int, dict[str, int]]:
        snap = self.tracker.get_tracker_snapshot(kind).get(self.device, {})
        breakdown = {self.categories.get(str(getattr(k, "value", k)), str(k)): v
                     for k, v in snap.items() if str(k) != "Total" and v}
        return snap.get("Total", 0), breakdown

    def current(self) -> int:
        return self._total("current")[0]

    @contextlib.contextmanager
    def phase(self) -> Iterator[Phase]:
        result = Phase(start_bytes=self.current())
        self.tracker.reset_mod_stats()
        with self.tracker:
            yield result
        result.peak_bytes, result.breakdown = self._total("peak")


class SavedTensorCounter:
    """Bytes saved for backward during a forward, deduplicated by storage.

    ``torch.autograd.graph.saved_tensors_hooks`` sees every tensor autograd keeps, including
    the inputs that non-reentrant checkpointing keeps for recomputation (tensors saved inside
    a checkpointed region are not kept, so they never reach this hook). Parameters, buffers
    (a Llama block's RoPE cos/sin, saved by the multiplications that apply them) and the given
    inputs are excluded: they are not activations, and exist before the forward.
    """

    def __init__(self, model: nn.Module, *inputs: torch.Tensor) -> None:
        self._excluded = {p.untyped_storage()._cdata for p in model.parameters()}
        self._excluded.update(b.untyped_storage()._cdata for b in model.buffers())
        self._excluded.update(t.untyped_storage()._cdata for t in inputs)
        self._storages: dict[int, int] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self._excluded and key not in self._storages:
            self._storages[key] = storage.nbytes()
        return tensor

    @property
    def saved_bytes(self) -> int:
        return sum(self._storages.values())

    @contextlib.contextmanager
    def count(self) -> Iterator["SavedTensorCounter"]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self


#: FSDPMemTracker's categories (``_FSDPRefType``), named in this suite's words.
FSDP_CATEGORY_NAMES: dict[str, str] = {
    "Sharded Param": "parameters",
    "Unsharded Param": "unsharded_parameters",
    "Buffer": "buffers",
    "Sharded Grad": "gradients",
    "Unsharded Grad": "unsharded_gradients",
    "Activation": "activations",
    "Temp": "temporaries",
    "All Gather": "all_gather",
    "Reduce Scatter": "reduce_scatter",
    "OptState": "optimizer_state",
    "Inputs": "input",
}

#: The method of ``FSDPMemTrackerProbe``, recorded as ``memory_method``.
FSDP_MEMTRACKER = "fsdp-memtracker"


class FSDPMemTrackerProbe(MemTrackerProbe):
    """``torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker`` on one rank of an FSDP2
    model: exact storage bytes of this rank by category, FSDP's own (sharded and unsharded
    parameters and gradients, all-gather and reduce-scatter buffers) apart."""

    categories = FSDP_CATEGORY_NAMES

    def __init__(self, device: torch.device, model: nn.Module, optimizer: torch.optim.Optimizer,
                 x: torch.Tensor) -> None:
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
        self.device = device
        self.method = FSDP_MEMTRACKER
        self.foreign_bytes = 0
        self.tracker = FSDPMemTracker(model, optimizer)
        self.tracker.track_inputs((x,))
        # FSDPMemTracker registers the sharded parameters, gradients and optimizer state when it
        # is entered: enter once, so that "current" counts them before the first phase too.
        with self.tracker:
            pass

    def current(self) -> int:
        """Bytes allocated now, less FSDP's unsharded parameters and collective buffers. Between
        phases those are transient, and when they go depends on timing: with gloo an all-gather
        output stays alive until its work object is released on gloo's thread, so right after
        the forward one block's 50816 B (``tiny``) were still counted in some runs and not in
        others. Without them ``forward_kept_bytes`` is what the policy keeps, the same in every
        run; the peaks keep every category."""
        total, breakdown = self._total("current")
        return total - sum(breakdown.get(k, 0) for k in FSDP_TRANSIENT)


#: FSDP's transient categories, left out of ``FSDPMemTrackerProbe.current``.
FSDP_TRANSIENT: tuple[str, ...] = ("unsharded_parameters", "unsharded_gradients", "all_gather", "reduce_scatter")


class ShardedSavedTensorCounter(SavedTensorCounter):
    """``SavedTensorCounter`` for an FSDP2 model: backward saves the *unsharded* parameters
    (linear layers keep their weight), whose storages FSDP2 frees (resizes to 0 bytes) when it
    reshards after each block's forward. A storage's bytes are therefore read when the forward
    has ended: a resharded parameter then counts 0, an activation its size. ``saved_bytes``
    must be read before backward (which releases the storages this counter holds)."""

    def __init__(self, model: nn.Module, *inputs: torch.Tensor) -> None:
        self._excluded = {_local(p).untyped_storage()._cdata for p in model.parameters()}
        self._excluded.update(t.untyped_storage()._cdata for t in inputs)
        self._held: dict[int, torch.UntypedStorage] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in self._excluded:
            self._held.setdefault(storage._cdata, storage)
        return tensor

    @property
    def saved_bytes(self) -> int:
        total = sum(s.nbytes() for s in self._held.values())
        self._held.clear()  # do not keep activations alive past the forward
        return total


def _local(parameter: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard, or the tensor itself."""
    return parameter.to_local() if hasattr(parameter, "to_local") else parameter
