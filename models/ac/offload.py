"""``torch.autograd.graph.save_on_cpu`` around the forward: tensors saved for backward go to
host memory (pinned on CUDA) and come back for backward."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.autograd.graph import save_on_cpu

from ac_bench.models.ac.base import Policy


class CountingOffload(save_on_cpu):
    """``save_on_cpu`` that also counts the bytes it moved off the device (``offloaded_bytes``):
    on the CPU ``tensor.cpu()`` is the tensor itself, so nothing moves and the count is 0."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(pin_memory=device.type == "cuda", device_type=device.type)
        self.offloaded_bytes = 0
        #: Tensors packed (on any device): shows that the hooks were live.
        self.packed = 0
        inner = self.pack_hook

        def pack(tensor: torch.Tensor):
            self.packed += 1
            if tensor.device.type != "cpu":
                self.offloaded_bytes += tensor.numel() * tensor.element_size()
            return inner(tensor)

        self.pack_hook = pack


@dataclass(frozen=True)
class OffloadAC(Policy):
    """Nothing recomputed: every tensor saved for backward is offloaded to host memory."""

    kind: ClassVar[str] = "offload"
    composition: ClassVar[str | None] = "offload"
    hidden_from_saved_tensors_hooks: ClassVar[str | None] = (
        "save_on_cpu installs saved_tensors_hooks of its own and only the innermost pair "
        "applies; see forward_kept_bytes and offloaded_bytes")

    def apply(self, model: nn.Module) -> nn.Module:
        return model

    @contextlib.contextmanager
    def forward_context(self, device: str | torch.device) -> Iterator[CountingOffload]:
        hooks = CountingOffload(torch.device(device))
        with hooks:  # saved_tensors_hooks.__enter__ returns None, so not `as hooks`
            yield hooks
