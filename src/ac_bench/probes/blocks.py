"""Memory and FLOPs per block: where in a training step each block's bytes come and go.

``block_timeline`` steps a variant as ``ac_bench.record.measure_variant`` does (a warm-up step,
then one measured step from a collected heap; fake tensors for estimated flavors) and cuts the
step at block boundaries: the forward of block j runs from its forward pre-hook to its forward
hook; the backward of block i from the moment the gradient of its output is ready (a hook on
that tensor) to the moment the gradient of block i-1's output is (for block 0, to the end of
``backward``). Per segment it records the peak of the bytes allocated (MemTracker's count,
updated after every op, as the record's peaks are) and the bytes allocated at its end; per
backward segment the FLOPs counted in it (FlopCounterMode, in the warm-up step, as the
record's FLOPs are), which include the block's recomputation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from ac_bench.models import Flavor, Policy, loss_fn
from ac_bench.models.ac.offload import HostOffloadWrapper
from ac_bench.probes.flops import flop_counter_mode
from ac_bench.probes.memory import compile_aware_mem_tracker_class


@dataclass(frozen=True)
class BlockTimeline:
    """One measured step cut at block boundaries. Bytes are above ``before_forward`` (what is
    allocated when the forward starts: the resident state less the gradients, which
    ``zero_grad(set_to_none=True)`` freed); tuples are indexed by block."""

    #: Bytes allocated when the forward starts.
    before_forward: int
    #: Bytes allocated at the end of block j's forward (its output included).
    forward_end: tuple[int, ...]
    #: Peak during block j's forward.
    forward_peak: tuple[int, ...]
    #: Peak between the last block's forward and the start of its backward (loss, its backward).
    tail_peak: int
    #: Peak during block i's backward (recomputation included).
    backward_peak: tuple[int, ...]
    #: Matmul FLOPs counted during block i's backward (FlopCounterMode's convention).
    backward_flops: tuple[int, ...]
    #: Bytes of one block's parameters (block 1's; their gradients take as many) and of the
    #: parameters outside the blocks.
    block_parameter_bytes: int
    other_parameter_bytes: int
    #: Bytes of the model's output (``forward_kept_bytes`` leaves it out).
    output_bytes: int
    #: Bytes allocated right after the model's forward (what follows the last block included:
    #: a final norm, say), as ``forward_kept_bytes`` counts them before leaving the output out.
    after_forward: int
    #: Bytes block j sent to host memory in the measured step's forward (an offloaded layer,
    #: ``HostOffloadWrapper``; 0 for every other block), what its backward brings back.
    offloaded: tuple[int, ...] = ()


class _Marks:
    """Hooks on ``model.blocks`` that call ``mark(label)`` at every block boundary, forward
    and backward."""

    def __init__(self, model: nn.Module, mark) -> None:
        self.mark = mark
        self.handles = []
        for i, block in enumerate(model.blocks):
            self.handles.append(block.register_forward_pre_hook(lambda m, a, i=i: self.mark(("forward_start", i))))
            self.handles.append(block.register_forward_hook(lambda m, a, out, i=i: self._after_forward(i, out)))

    def _after_forward(self, i: int, out) -> None:
        self.mark(("forward_end", i))
        tensor = out[0] if isinstance(out, tuple) else out
        if tensor.requires_grad:
            tensor.register_hook(lambda grad: self.mark(("backward_start", i)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _segments(marks: list[tuple[tuple[str, int] | str, int, int]], depth: int) -> dict:
    """``marks``: (label, peak since the previous mark, value at the mark), in order."""
    at = {label: (peak, value) for label, peak, value in marks}
    missing = [lbl for lbl in [*(("forward_end", i) for i in range(depth)), *(("backward_start", i) for i in range(depth)),
                               "end"] if lbl not in at]
    if missing:
        raise RuntimeError(f"block timeline: no mark for {missing[0]} (the model's blocks are not model.blocks, "
                           f"or a block's output needs no gradient)")
    order = [label for label, _, _ in marks]
    seg = {}
    for i in range(depth):
        seg[("forward", i)] = at[("forward_end", i)][0]
        # Block i's backward ends where block i-1's begins (block 0's at the end of backward).
        seg[("backward", i)] = at[("backward_start", i - 1)][0] if i > 0 else at["end"][0]
    seg["tail"] = at[("backward_start", depth - 1)][0]
    seg["forward_end"] = tuple(at[("forward_end", i)][1] for i in range(depth))
    seg["order"] = order
    return seg


def block_timeline(flavor: Flavor, attention: str, policy: Policy, device: str | torch.device = "cpu",
                   fake: bool | None = None) -> BlockTimeline:
    """The step of ``policy`` with ``attention`` at ``flavor``, cut at block boundaries
    (this module's docstring); on fake tensors where ``fake``, by default where the flavor is
    estimated on ``device``. On the CPU fake tensors give the bytes and FLOPs of real ones
    (MemTracker counts storage bytes), without the compute."""
    from ac_bench.record import build_training, frozen_heap, is_estimate, reset_collector
    device = torch.device(device)
    fake = is_estimate(flavor, device) if fake is None else fake
    with FakeTensorMode() if fake else contextlib.nullcontext():
        training = build_training(flavor, f"{policy.name}-{attention}", device, policy)
        model, depth = training.model, len(training.model.blocks)
        if training.policy.compiles:
            raise ValueError(f"policy {policy.name!r} compiles the model: its blocks are not cut apart")

        # Warm-up step, FLOPs per segment (the counter's running total at each mark).
        counter = flop_counter_mode()
        flop_marks: list = []
        last = [0]

        def flop_mark(label) -> None:
            total = int(counter.get_total_flops())
            flop_marks.append((label, total - last[0], total))
            last[0] = total
        hooks = _Marks(model, flop_mark)
        training.step(around_forward_backward=counter)
        flop_mark("end_of_warmup")
        hooks.remove()
        bwd_flops = {}
        for label, delta, _ in flop_marks:  # the FLOPs since the previous mark belong to the segment it ends
            bwd_flops[label] = delta

        tracker = _segment_tracker(device)
        tracker.track_external(model, training.optimizer, training.x)
        mem_marks: list = []

        def mem_mark(label) -> None:
            mem_marks.append((label, tracker.segment_peak, tracker.total()))
            tracker.segment_peak = tracker.total()
        # Offloaded layers and sublayers count this step's bytes, per block.
        offloading = [HostOffloadWrapper.within(block) for block in model.blocks]
        with frozen_heap():
            reset_collector()
            with tracker:
                training.optimizer.zero_grad(set_to_none=True)
            reset_collector()
            hooks = _Marks(model, mem_mark)
            with tracker:
                before = tracker.total()
                tracker.segment_peak = before
                with training.policy.forward_context(device):
                    out = model(training.x)
                after_forward = tracker.total() - before
                output_bytes = out.untyped_storage().nbytes()
                loss = loss_fn(out)
                del out
                loss.backward()
                mem_mark("end")
                del loss
            hooks.remove()
        seg = _segments(mem_marks, depth)
        blocks = list(model.blocks)
        block_params = sum(p.numel() * p.element_size() for p in blocks[min(1, depth - 1)].parameters())
        all_params = sum(p.numel() * p.element_size() for p in model.parameters())
        in_blocks = sum(p.numel() * p.element_size() for b in blocks for p in b.parameters())
    return BlockTimeline(
        before_forward=before,
        forward_end=tuple(v - before for v in seg["forward_end"]),
        forward_peak=tuple(seg[("forward", i)] - before for i in range(depth)),
        tail_peak=seg["tail"] - before,
        backward_peak=tuple(seg[("backward", i)] - before for i in range(depth)),
        backward_flops=tuple(bwd_flops[("backward_start", i - 1)] if i > 0 else bwd_flops["end_of_warmup"]
                             for i in range(depth)),
        block_parameter_bytes=block_params,
        other_parameter_bytes=all_params - in_blocks,
        output_bytes=output_bytes,
        after_forward=after_forward,
        offloaded=tuple(sum(w.offloaded_bytes for w in wrappers) for wrappers in offloading),
    )


def _segment_tracker(device: torch.device):
    """A MemTracker (the suite's compile-aware one) that also keeps the peak since the last
    mark (``segment_peak``), updated after every op as the tracker's own peak is. It counts
    ``device``'s bytes only: on a GPU an offloaded layer's host copies are CPU tensors."""
    base = compile_aware_mem_tracker_class()

    class SegmentTracker(base):
        segment_peak = 0

        def total(self) -> int:
            return sum(snap.get("Total", 0) for dev, snap in self._curr_mem_snap.items()
                       if torch.device(dev).type == device.type)

        def _update_peak_stats(self, peak_state) -> None:
            super()._update_peak_stats(peak_state)
            self.segment_peak = max(self.segment_peak, self.total())

    return SegmentTracker()
