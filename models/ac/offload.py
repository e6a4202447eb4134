"""``torch.autograd.graph.save_on_cpu`` around the forward: tensors saved for backward go to
host memory (pinned on CUDA) and come back for backward."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.autograd.graph import save_on_cpu
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

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


#: Set by ``simulated_host``: offload wrappers on fake tensors send what they pack to a simulated host.
_SIMULATED_HOST: contextvars.ContextVar[bool] = contextvars.ContextVar("simulated_host", default=False)


@contextlib.contextmanager
def simulated_host() -> Iterator[None]:
    """Within it, ``HostOffloadWrapper`` on fake tensors offloads to a simulated host: the
    planner's figures on the CPU, where the device has no host of its own to offload to.

    What it packs leaves the device as ``save_on_cpu`` makes it leave a GPU (the saved tensor's
    device bytes are freed once nothing else holds them, and backward allocates a new device
    tensor of the same layout when it unpacks it), while the host copy is only counted
    (``offloaded_bytes``). On real tensors it raises RuntimeError: the values would be lost."""
    token = _SIMULATED_HOST.set(True)
    try:
        yield
    finally:
        _SIMULATED_HOST.reset(token)


class SimulatedHost(torch.autograd.graph.saved_tensors_hooks):
    """Pack: the tensor's layout (size, stride, dtype, device), its bytes counted in
    ``offloaded_bytes``; unpack: ``torch.empty_strided`` of that layout on the device. Fake
    tensors only (``simulated_host``)."""

    def __init__(self) -> None:
        self.offloaded_bytes = 0

        def pack(tensor: torch.Tensor):
            if not isinstance(tensor, FakeTensor):
                raise RuntimeError("the simulated host takes fake tensors only (it keeps no values); "
                                   "measure under FakeTensorMode, or offload for real on a GPU")
            self.offloaded_bytes += tensor.numel() * tensor.element_size()  # what save_on_cpu copies
            return tensor.size(), tensor.stride(), tensor.dtype, tensor.device

        def unpack(layout) -> torch.Tensor:
            size, stride, dtype, device = layout
            return torch.empty_strided(size, stride, dtype=dtype, device=device)

        super().__init__(pack, unpack)


class HostOffloadWrapper(ActivationWrapper):
    """A module whose forward runs under offloading hooks: what it saves for backward goes to
    host memory (torch's ``OffloadWrapper``, ``save_on_cpu`` pinned, on a GPU; the simulated host
    on fake tensors under ``simulated_host``; on the CPU without it nothing moves, as for the
    ``offload`` policy). State-dict keys are the wrapped module's (``ActivationWrapper``).
    ``offloaded_bytes``: the bytes it moved off the device in its forwards since
    ``reset_offloaded``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.offloaded_bytes = 0

    def reset_offloaded(self) -> None:
        self.offloaded_bytes = 0

    @staticmethod
    def within(module: nn.Module) -> list["HostOffloadWrapper"]:
        """Every offload wrapper in ``module`` (itself included), counts reset to 0: what the
        step about to be measured offloads is then the sum of their ``offloaded_bytes``."""
        wrappers = [m for m in module.modules() if isinstance(m, HostOffloadWrapper)]
        for wrapper in wrappers:
            wrapper.reset_offloaded()
        return wrappers

    def forward(self, *args, **kwargs):
        first = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        if _SIMULATED_HOST.get() and isinstance(first, FakeTensor):
            hooks = SimulatedHost()
        else:
            device = first.device if first is not None else torch.device("cpu")
            hooks = CountingOffload(device)
        with hooks:
            out = self._checkpoint_wrapped_module(*args, **kwargs)
        self.offloaded_bytes += hooks.offloaded_bytes
        return out
