"""Hostile model families for the self-tests, each loaded by name with
``--model-spec tests.families:NAME`` (from the repository root), as a user's would be.

``BATCHNORM``: the suite's transformer with each MLP sublayer behind a ``BatchNorm1d`` over
d_model (on the residual stream): it removes any per-feature constant, so the gradient of the
attention's output bias in front of it is zero in exact arithmetic and computed as rounding
noise (~1e-9 at ``tiny``). ``NON_FINITE``: a model whose output, and so its loss, is NaN.
``BROKEN_BUILD``: a builder that raises, as a user's does when its weights file is missing.
``KEYWORD``: the suite's transformer whose blocks call their MLP with a keyword argument
(``mlp(x=h)``), so that a checkpointed MLP's input is held as a Python object, out of
saved-tensor hooks' sight, and the family declares no ``saved_bytes_gap``.
"""

from __future__ import annotations

import torch

from ac_bench.models import Family, Flavor
from ac_bench.models.transformer import build_transformer


def _tiny(name: str, family: str) -> Flavor:
    """``tiny``'s shape under another name."""
    return Flavor(name, d_model=32, n_heads=2, depth=3, batch=2, seq_len=16, family=family)


class NormalizedMLP(torch.nn.Module):
    """A block's MLP sublayer behind a BatchNorm over d_model, per token."""

    def __init__(self, mlp: torch.nn.Module, d_model: int) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(d_model)
        self.inner = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape))


def build_batchnorm(flavor: Flavor, attention: str, dropout: float = 0.0) -> torch.nn.Module:
    model = build_transformer(flavor, attention, dropout)
    for block in model.blocks:
        block.mlp = NormalizedMLP(block.mlp, flavor.d_model)
    return model


def build_non_finite(flavor: Flavor, attention: str, dropout: float = 0.0) -> torch.nn.Module:
    model = build_transformer(flavor, attention, dropout)
    model.register_forward_hook(lambda module, args, output: output * float("nan"))
    return model


def build_broken(flavor: Flavor, attention: str, dropout: float = 0.0) -> torch.nn.Module:
    raise FileNotFoundError(f"no weights for {flavor.name} at /nowhere/weights.pt")


class KeywordBlock(torch.nn.Module):
    """A block whose MLP gets its input as a keyword argument."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.attn, self.mlp = block.attn, block.mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x=self.attn(x))


def build_keyword(flavor: Flavor, attention: str, dropout: float = 0.0) -> torch.nn.Module:
    model = build_transformer(flavor, attention, dropout)
    model.blocks = torch.nn.ModuleList(KeywordBlock(block) for block in model.blocks)
    return model


class NoBlocks(torch.nn.Module):
    """A model that breaks the contract: its layers are not ``blocks``."""

    def __init__(self, flavor: Flavor):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(flavor.d_model, flavor.d_model) for _ in range(flavor.depth))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


def build_no_blocks(flavor: Flavor, attention: str, dropout: float = 0.0) -> torch.nn.Module:
    return NoBlocks(flavor)


BATCHNORM = Family("bn-gpt", build=build_batchnorm, flavors=(_tiny("bn-gpt-tiny", "bn-gpt"),))
NON_FINITE = Family("nan-gpt", build=build_non_finite, flavors=(_tiny("nan-gpt-tiny", "nan-gpt"),))
BROKEN_BUILD = Family("broken-gpt", build=build_broken, flavors=(_tiny("broken-gpt-tiny", "broken-gpt"),))
KEYWORD = Family("kw-gpt", build=build_keyword, flavors=(_tiny("kw-gpt-tiny", "kw-gpt"),))
NO_BLOCKS = Family("noblocks-gpt", build=build_no_blocks, flavors=(_tiny("noblocks-gpt-tiny", "noblocks-gpt"),))
