"""Model families as data (torchtitan's ``ModelSpec``, gpt-fast's ``transformer_configs``).

A ``Family`` says how to build a model for a flavor and an attention implementation, which
sublayers of its blocks a policy may wrap, whether it takes a dropout probability, and where
its analytic model is. A flavor names its family (``Flavor.family``); ``build_model``
dispatches through it, so the suite's tests, which parametrize over what a family declares,
need no change for a new family, the user's own included (``register_family``, or
``pytest bench/ --model-spec package.module:SPEC``).

The contract a family's model keeps, so that every policy kind applies: ``model.blocks`` is an
``nn.ModuleList``, or a sequence that reads and replaces its layers in place by index (the
torchtitan adapter's, over torchtitan's ``ModuleDict``), that ``forward`` runs in sequence on the
input (the sequential policy replaces ``forward`` by ``checkpoint_sequential`` over it); each
block has one attribute per declared
sublayer, a module called on the residual stream (``x -> x + f(x)``), which the region, plan
and selective policies wrap; the loss is ``output.mean()``. A family may supply its own input
(``Family.make_input``: token ids, say) and a model whose forward returns its own scalar loss,
which ``output.mean()`` leaves as it is; its blocks' sublayers may sit under other attribute
names (the model's ``sublayer_attributes``). The transformers and torchtitan adapters
(``ac_bench.models.hf``, ``ac_bench.models.titan``) do both.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ac_bench.models.ac.base import SUBLAYERS, Policy
from ac_bench.models.ac.registry import POLICIES, get_policy, variant_id
from ac_bench.models.llama import LLAMA_FLAVORS, build_llama, llama_shape
from ac_bench.models.transformer import FLAVORS, Flavor, build_transformer, resolve_dtype


def resolve_reference(ref: Any) -> Any:
    """``"module:attribute"`` -> that attribute, imported when first needed; anything else as it is."""
    if isinstance(ref, str):
        module, _, attribute = ref.partition(":")
        return getattr(importlib.import_module(module), attribute)
    return ref


@dataclass(frozen=True)
class Family:
    """A model family: its builder, flavors, what policies may wrap, and its analytic model.

    ``build(flavor, attention, dropout)`` constructs the model; ``build_model`` calls it with
    the device and the default dtype set, so parameters are created in place (also on fake
    tensors). ``analytic``: the family's analytic model (``ac_bench.analytic.FamilyCounts``), an
    object or ``"module:attribute"`` resolved when first needed, or None (then the analytic
    checks skip and say so; the suite's own families' models are registered in
    ``ac_bench.analytic.BUILTIN_MODELS``, so that nothing here names the layers above).
    ``dropout``: whether ``build`` honours a dropout probability (the
    dropout gradient test needs it).
    """

    name: str
    build: Callable[[Flavor, str, float], nn.Module]
    flavors: tuple[Flavor, ...] = ()
    sublayers: tuple[str, ...] = SUBLAYERS
    attentions: tuple[str, ...] = ("eager", "sdpa")
    analytic: Any = None
    dropout: bool = True
    description: str = ""
    #: The shape fields this family adds to the common ones (d_model, n_heads, depth, batch,
    #: seq_len), as the record stores them (``Measurement.family_shape``): ``shape(flavor)``
    #: gives a JSON-able dict; None: the family adds none.
    shape: Callable[[Flavor], dict] | None = None
    #: The step's input, ``make_input(flavor, device, dtype)``, made right after the model is
    #: built from seed 0; None: ``randn(batch, seq_len, d_model)`` in ``dtype`` (the notebook's
    #: step). The transformers families give token ids, ``(batch, seq_len)`` int64 < vocab.
    make_input: Callable[[Flavor, torch.device, torch.dtype], torch.Tensor] | None = None
    #: Policies beyond ``POLICIES`` that this family runs, by name (``LIBRARY_POLICIES``: the
    #: libraries' own semantics, ``whole_layers`` and ``native``, on the transformers families).
    extra_policies: tuple[str, ...] = ()
    #: Policy kinds (``Policy.kind``) this family's models cannot run, each with the reason:
    #: their variants are not generated, and asking for one explicitly raises that reason.
    unsupported_kinds: tuple[tuple[str, str], ...] = ()
    #: Why ``saved_tensors_hooks`` miss some of what this family's checkpointed regions keep (then
    #: ``saved_bytes <= forward_kept_bytes`` is checked instead of equality), or None: they miss none.
    saved_bytes_gap: str | None = None
    #: Why this family's own checkpointing switch (``native``) recomputes each layer's whole
    #: forward where ``whole_layers`` stops once every saved tensor is back (non-reentrant
    #: checkpointing's early stop: torchtitan's ``FullAC`` turns it off), or None: it stops early
    #: too. The benchmark's native check then holds ``native`` to ``LayerAC(early_stop=False)``.
    native_no_early_stop: str | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.sublayers if s not in SUBLAYERS]
        if bad:
            raise ValueError(f"family {self.name!r}: unknown sublayers {bad}; the policies wrap {SUBLAYERS}")
        for name in self.extra_policies:
            try:
                get_policy(name)
            except ValueError as exc:
                raise ValueError(f"family {self.name!r}: extra_policies: {exc}") from None
        strangers = [f.name for f in self.flavors if f.family != self.name]
        if strangers:
            raise ValueError(f"family {self.name!r}: flavors {strangers} name another family; "
                             f"give them family={self.name!r}")

    def analytic_model(self) -> Any:
        """The analytic model object, or None."""
        return resolve_reference(self.analytic)

    def shape_fields(self, flavor: Flavor) -> dict:
        """The shape fields this family adds, for ``flavor`` (``{}`` where it adds none)."""
        return dict(self.shape(flavor)) if self.shape is not None else {}

    def input_for(self, flavor: Flavor, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The step's input for ``flavor`` (``make_input``, or ``randn(flavor.input_shape())``)."""
        if self.make_input is not None:
            return self.make_input(flavor, torch.device(device), dtype)
        return torch.randn(flavor.input_shape(), device=device, dtype=dtype)

    def exclusion(self, policy: Policy) -> str | None:
        """Why this family cannot run ``policy`` (it wraps a sublayer the family lacks, or its kind
        is in ``unsupported_kinds``), or None where it can."""
        missing = [s for s in getattr(policy, "sublayers", ()) if s not in self.sublayers]
        if missing:
            return (f"family {self.name!r} has no sublayer {', '.join(missing)} for policy {policy.name!r} to wrap "
                    f"(it declares {', '.join(self.sublayers)})")
        reason = dict(self.unsupported_kinds).get(policy.kind)
        return reason and f"family {self.name!r} cannot run policy {policy.name!r} ({policy.kind}): {reason}"

    def applies(self, policy: Policy) -> bool:
        """Whether this family runs ``policy`` (``exclusion`` is None)."""
        return self.exclusion(policy) is None

    def variants(self) -> tuple[str, ...]:
        """The variants this family runs: ``POLICIES`` and its ``extra_policies``, each policy it
        can run with each attention it declares, policies outer."""
        return tuple(variant_id(p, a) for p in (*POLICIES, *self.extra_policies) for a in self.attentions
                     if self.applies(get_policy(p)))


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family and its flavors to the registries; a name already taken by another
    family or flavor raises a ValueError (re-registering the same family is a no-op)."""
    if not isinstance(family, Family):
        raise ValueError(f"expected a ac_bench.models.families.Family, got {type(family).__name__}")
    if FAMILIES.get(family.name, family) is not family:
        raise ValueError(f"a family named {family.name!r} is already registered")
    taken = [f.name for f in family.flavors if FLAVORS.get(f.name, f) != f]
    if taken:
        raise ValueError(f"family {family.name!r}: flavor names already taken: {', '.join(taken)}")
    FAMILIES[family.name] = family
    FLAVORS.update({f.name: f for f in family.flavors})
    return family


def family_of(flavor: Flavor) -> Family:
    """The flavor's family, or a ValueError naming the registered ones."""
    try:
        return FAMILIES[flavor.family]
    except KeyError:
        raise ValueError(f"flavor {flavor.name!r} names family {flavor.family!r}, which is not registered; "
                         f"registered: {', '.join(FAMILIES)}") from None


def build_model(flavor: Flavor, attention: str, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None, dropout: float = 0.0) -> nn.Module:
    """Build the flavor's model through its family, with the given attention implementation,
    on ``device``. Parameters are created directly in ``dtype`` (the default dtype is set during
    construction) rather than converted afterwards, which is also what fake tensors need."""
    family = family_of(flavor)
    if attention not in family.attentions:
        raise ValueError(f"family {family.name!r} has no attention implementation {attention!r}; "
                         f"it declares {', '.join(family.attentions)}")
    dtype = dtype or resolve_dtype(flavor, device)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return family.build(flavor, attention, dropout)
    finally:
        torch.set_default_dtype(previous)


TRANSFORMER = register_family(Family(
    "transformer", build_transformer, flavors=tuple(f for f in FLAVORS.values() if f.family == "transformer"),
    shape=lambda f: {"mlp_hidden": 4 * f.d_model},
    description="the notebook's block: pre-LayerNorm, nn.MultiheadAttention, ReLU MLP (4d), biases"))

LLAMA = register_family(Family(
    "llama", build_llama, flavors=LLAMA_FLAVORS, shape=llama_shape,
    description="torchtitan llama3 / gpt-fast style: RMSNorm, RoPE, GQA, causal, SwiGLU, no biases"))


def load_family_spec(spec: str) -> Family | tuple[Family, ...]:
    """``package.module:NAME`` (``:SPEC`` when left out) -> the ``Family`` it names, or the tuple
    of families (``ac_bench.models.hf:ALL``), registered with their flavors; the module is imported
    from sys.path, else from the current folder. Any problem raises a ValueError whose message
    is one line."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "SPEC"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")) \
            or not attribute.isidentifier():
        raise ValueError(f"--model-spec {spec!r}: write it as package.module:NAME, "
                         f"e.g. examples.my_family:SPEC")
    # The user's module is found on sys.path, else in the current folder (pytest's console script
    # does not put it on sys.path, ``python -m`` does); appended last, so that a folder of this
    # repository never shadows a user's package of the same name found elsewhere.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any error while importing it is theirs
        raise ValueError(f"--model-spec {spec!r}: cannot import {module_name!r}: "
                         f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
    if not hasattr(module, attribute):
        raise ValueError(f"--model-spec {spec!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
                         f"has no attribute {attribute!r}")
    found = getattr(module, attribute)
    families = found if isinstance(found, tuple) and found else (found,)
    for family in families:
        if not isinstance(family, Family):
            raise ValueError(f"--model-spec {spec!r}: {attribute} is a {type(found).__name__}, not an "
                             f"ac_bench.models.families.Family (or a tuple of them)")
        if not family.flavors:
            raise ValueError(f"--model-spec {spec!r}: family {family.name!r} declares no flavors; give it "
                             f"flavors=(Flavor(..., family={family.name!r}),)")
    try:
        registered = tuple(register_family(family) for family in families)
    except ValueError as exc:
        raise ValueError(f"--model-spec {spec!r}: {exc}") from None
    if getattr(module, "__file__", None) and not module_name.startswith(("ac_bench.", "models.")):
        USER_SPEC_FILES[os.path.realpath(module.__file__)] = spec
    return registered if isinstance(found, tuple) else registered[0]


def load_family_specs(specs) -> list[tuple[str, Family]]:
    """Each family the ``--model-spec`` values ``specs`` name, registered, with the spec that
    loaded it, in order (a tuple such as ``ac_bench.models.hf:ALL`` gives one pair per family).
    A ValueError (one line, from ``load_family_spec``) for the first spec that does not load."""
    pairs = []
    for spec in specs:
        loaded = load_family_spec(spec)
        pairs += [(spec, family) for family in (loaded if isinstance(loaded, tuple) else (loaded,))]
    return pairs


#: The files of the user's ``--model-spec`` modules loaded in this process (not the suite's own
#: ``ac_bench.models.hf``/``titan``), each with its spec: ``user_family_failure`` reads them.
USER_SPEC_FILES: dict[str, str] = {}


def user_family_failure(exc: BaseException) -> str | None:
    """One line for an exception raised in a user's ``--model-spec`` module (a forward whose
    shapes do not agree, say), naming the spec, the line of the family's code and the error;
    None where no frame of the traceback is in such a module (the suite's own bug: a traceback)."""
    import traceback
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.realpath(f.filename) in USER_SPEC_FILES]
    if not frames:
        return None
    frame = frames[-1]
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:300] + "..."
    return (f"--model-spec {USER_SPEC_FILES[os.path.realpath(frame.filename)]!r}: the family's code raised "
            f"{type(exc).__name__} at {os.path.basename(frame.filename)}:{frame.lineno} ({frame.line}): {text}; "
            f"fix the family (docs/extending.md, \"A model family\")")
