"""A user's family that leaks, for the self-tests (``--model-spec tests.plugins.leaky_family:SPEC``):
the notebook's block, whose MLP sublayers keep a reference to every output they return (the
shape of pytorch #80151). Gradients, FLOPs and one step's memory are those of the notebook's
block; only memory growth from step to step gives it away, and no baselines exist for it."""

import torch
from torch import nn

from ac_bench.models import Family, Flavor
from ac_bench.models.transformer import build_transformer


class KeepsOutputs(nn.Module):
    """``x -> x + f(x)`` as wrapped, keeping each output alive."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.kept: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.kept.append(out)
        return out


def build(flavor: Flavor, attention: str, dropout: float = 0.0) -> nn.Module:
    model = build_transformer(flavor, attention, dropout)
    for block in model.blocks:
        block.mlp = KeepsOutputs(block.mlp)
    return model


LEAKY_TINY = Flavor("leaky-tiny", d_model=32, n_heads=2, depth=3, batch=2, seq_len=16, family="leaky")
SPEC = Family("leaky", build, flavors=(LEAKY_TINY,), description="the notebook's block, its MLP outputs kept")
