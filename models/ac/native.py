"""The model's own checkpointing switch, measured as it is: transformers'
``activation_checkpointing_enable`` (5.24; ``gradient_checkpointing_enable`` before), or an
adapter's method of that name that applies its library's own (``ac_bench.models.titan``:
torchtitan's ``FullAC``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ac_bench.models.ac.base import Policy

#: What ``native`` passes to the switch: non-reentrant ``torch.utils.checkpoint``, as the
#: suite's own policies use (transformers 5.18's default too); torch's default
#: ``preserve_rng_state=True`` applies.
NATIVE_KWARGS: dict = {"use_reentrant": False}


@dataclass(frozen=True)
class NativeAC(Policy):
    """``model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``:
    the library decides what is checkpointed (transformers 5.18: every ``GradientCheckpointingLayer``,
    that is every decoder layer, layer 0 included, when the model is in training mode;
    ``modeling_utils.PreTrainedModel.gradient_checkpointing_enable`` and ``modeling_layers.py``).
    The torchtitan adapter's method of the same name applies torchtitan's ``FullAC`` to the
    model's layers, as ``parallelize_llama`` does for the trainer's ``full`` activation checkpointing.
    Measured as it is, so a model whose switch does less than it says (an override that leaves
    some layers out, or a silent no-op) differs from ``whole_layers``, which the suite checks.
    A model without such a switch cannot run it: ``apply`` says so in one line."""

    kind: ClassVar[str] = "native"
    #: What the library checkpoints is its own business: not modelled.
    composition: ClassVar[str | None] = None
    fsdp2_incompatibility: ClassVar[str | None] = None

    def apply(self, model: nn.Module) -> nn.Module:
        """Call the model's own switch (``native_switch``); a ValueError if it has none."""
        found = native_switch(model)
        if found is None:
            raise ValueError(f"policy {self.name!r}: {type(model).__name__} has no checkpointing switch of its own "
                             f"(transformers' gradient_checkpointing_enable); 'native' runs on transformers and torchtitan models only")
        switch, keyword = found
        switch(**{keyword: dict(NATIVE_KWARGS)})
        return model


def native_switch(model: nn.Module) -> tuple[Callable[..., None], str] | None:
    """The model's own checkpointing switch and the name of its keyword for ``torch.utils.checkpoint``'s
    arguments, or None: transformers 5.24's ``activation_checkpointing_enable(activation_checkpointing_kwargs=...)``
    where the model has it (5.24 deprecates ``gradient_checkpointing_enable`` as its alias, to be
    removed in v6, and warns with a FutureWarning on each call), else
    ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)`` (transformers 5.18, the
    torchtitan adapter). A subclass that overrides the old name is still reached through the new
    one: transformers' ``activation_checkpointing_enable`` calls an override of it."""
    for name, keyword in (("activation_checkpointing_enable", "activation_checkpointing_kwargs"),
                          ("gradient_checkpointing_enable", "gradient_checkpointing_kwargs")):
        switch = getattr(model, name, None)
        if callable(switch):
            return switch, keyword
    return None
