"""The policy interface every kind implements."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar

import torch

SUBLAYERS: tuple[str, ...] = ("attn", "mlp")


def sublayer_attribute(model: torch.nn.Module, sublayer: str) -> str:
    """The attribute of ``model``'s blocks that holds ``sublayer`` (``attn``, ``mlp``): the
    model's ``sublayer_attributes`` mapping where it has one (a transformers Llama layer's
    attention is ``self_attn``), else the sublayer's own name."""
    return getattr(model, "sublayer_attributes", {}).get(sublayer, sublayer)


def parse_count(pattern: str, name: str, least: int, rule: str) -> int | None:
    """``N`` of a name ``pattern`` (one ``(\\d+)`` group) fully matching ``name``, None when it does
    not match; a ValueError saying ``rule`` when N < ``least`` or is written with leading zeros."""
    m = re.fullmatch(pattern, name)
    if m is None:
        return None
    n = int(m.group(1))
    if n < least or m.group(1) != str(n):
        raise ValueError(f"checkpointing policy {name!r}: {rule}")
    return n


@dataclass(frozen=True)
class Policy:
    """One activation-checkpointing policy: its name, kind and settings.

    ``apply`` changes the model in place (wrapping modules or replacing its forward) and returns
    it; ``forward_context`` is entered around every forward of a training step (a
    ``saved_tensors_hooks`` context, say); most kinds need none.
    """

    name: str
    #: Restore the RNG state before recomputing, so dropout draws the same masks.
    preserve_rng_state: bool = True

    kind: ClassVar[str] = "policy"
    #: Why ``saved_tensors_hooks`` cannot see what this kind keeps (None: they can), recorded
    #: as ``saved_bytes_note`` with a null ``saved_bytes``.
    hidden_from_saved_tensors_hooks: ClassVar[str | None] = None
    #: Whether ``apply`` compiles the model (torch.compile): its first step must then run
    #: outside every dispatch mode, or Dynamo runs the model eagerly.
    compiles: ClassVar[bool] = False
    #: How the analytic model (``ac_bench.analytic``) composes this kind's figures from a
    #: family's per-sublayer counts: ``"regions"`` (``is_checkpointed(block, sublayer, depth)``;
    #: a selective kind's ``save_ops`` on top), ``"sequential"`` (``segment_ranges(depth)``),
    #: ``"offload"`` (everything saved moves to the host), or None: not modelled, so the
    #: analytic checks skip for it with the reason (its figures are still measured and gated).
    composition: ClassVar[str | None] = None
    #: Why this kind is not run under FSDP2 (``ac_bench.distributed``: left out of sharded runs
    #: with this reason, an error when asked for), or None: it composes with ``fully_shard``.
    fsdp2_incompatibility: ClassVar[str | None] = None

    #: The parameterised names this kind reads (``from_name``), for the unknown-policy message.
    name_grammar: ClassVar[str | None] = None

    @classmethod
    def from_name(cls, name: str) -> Policy | None:
        """The policy of this kind that a parameterised ``name`` describes (``every_4``,
        ``budget_0.3``), None when the name is not of this kind's form; a ValueError with the
        rule when it is of the form but invalid. ``get_policy`` asks every kind in turn."""
        return None

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def forward_context(self, device: str | torch.device) -> contextlib.AbstractContextManager:
        """Entered around the forward of every step; a no-op unless the kind needs one."""
        return contextlib.nullcontext()

    def params(self) -> dict:
        """The settings, as plain JSON-able data (the name excluded)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "name":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def record_params(self, device: str | torch.device) -> dict:
        """The settings as run on ``device`` (a kind whose settings resolve per device, such as
        a compiler backend, records the resolved value)."""
        return self.params()

    def as_record(self) -> dict:
        """``{"name", "kind", "params"}``: the policy as the measurement record stores it."""
        return {"name": self.name, "kind": self.kind, "params": self.params()}
