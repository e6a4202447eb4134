"""The reference transformer: pre-LayerNorm blocks, no embedding or head, loss = output.mean().

The model class never changes with the checkpointing strategy (see models/ac/):
each block calls its two sublayers as separate modules so a strategy can wrap either one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

#: Attention implementations, named as the ecosystem names them.
#: eager: need_weights=True, the heads x seq x seq probability matrix is materialised.
#: sdpa: need_weights=False, MultiheadAttention calls the fused scaled_dot_product_attention
#: kernels (on CUDA whichever backend PyTorch picks: cuDNN attention on the H200 with torch
#: 2.11; the flash kernel on CPU).
ATTENTIONS: tuple[str, ...] = ("eager", "sdpa")


def check_attention(attention: str) -> str:
    """Return ``attention`` or raise a ValueError listing the valid names."""
    if attention not in ATTENTIONS:
        raise ValueError(
            f"unknown attention implementation {attention!r}; valid names: {', '.join(ATTENTIONS)}"
        )
    return attention


class AttentionSublayer(nn.Module):
    """``x + MHA(LN1(x))``."""

    def __init__(self, d_model: int, n_heads: int, attention: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = check_attention(attention)
        self.ln = nn.LayerNorm(d_model)
        self.mha = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        out, _ = self.mha(h, h, h, need_weights=self.attention == "eager")
        return x + out


class MLPSublayer(nn.Module):
    """``x + Linear(4d->d)(ReLU(Linear(d->4d)(LN2(x))))``."""

    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4 * d_model, d_model)
        # Dropout is a test-only setting (RNG-state preservation under recompute); p=0 is a no-op.
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(self.act(self.fc1(self.ln(x)))))


class Block(nn.Module):
    """One pre-LN transformer block; ``attn`` and ``mlp`` are separately wrappable sublayers."""

    def __init__(self, d_model: int, n_heads: int, attention: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = AttentionSublayer(d_model, n_heads, attention, dropout)
        self.mlp = MLPSublayer(d_model, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))


class Transformer(nn.Module):
    """``depth`` blocks applied in sequence."""

    def __init__(
        self, d_model: int, n_heads: int, depth: int, attention: str, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, attention, dropout) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def loss_fn(output: torch.Tensor) -> torch.Tensor:
    """The exercise's loss: the mean of the output."""
    return output.mean()


@dataclass(frozen=True)
class Flavor:
    """A named model and input size.

    ``dtype`` is the compute dtype; bfloat16 falls back to float16 on CUDA devices without
    bf16 support. ``cpu_mode`` says how the flavor is handled on the CPU: ``"measure"``
    (real tensors) or ``"estimate"`` (fake tensors only: exact bytes and FLOPs, no compute;
    too large to train on a 2-core CPU).

    ``family`` names the model family (``ac_bench.models.families``) that builds it; the fields after
    it are that family's own settings, with defaults the other families ignore (``llama``:
    grouped K/V heads, the SwiGLU hidden size rule, RoPE's base, RMSNorm's epsilon).
    """

    name: str
    d_model: int
    n_heads: int
    depth: int
    batch: int
    seq_len: int
    dtype: str = "float32"
    cpu_mode: str = "measure"
    family: str = "transformer"
    #: Key/value heads (grouped-query attention); None: as many as ``n_heads``.
    n_kv_heads: int | None = None
    #: SwiGLU hidden size: ``int(2 * 4 * d / 3)``, times ``ffn_dim_multiplier``, rounded up to
    #: a multiple of ``multiple_of`` (torchtitan's llama3 rule).
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    #: The MLP's hidden size where a family's published config states it outright instead of
    #: by the llama3 rule above (Qwen3's ``intermediate_size``); None: the family's own rule.
    ffn_hidden: int | None = None

    def input_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.seq_len, self.d_model)


def _flavors(*flavors: Flavor) -> dict[str, Flavor]:
    return {f.name: f for f in flavors}


#: One line per flavor. ``seed`` is the shape users compare against; ``small`` is the
#: default measured flavor on the CPU (seq 2048 so that eager attention's heads*seq^2 term
#: dominates activation memory, small enough for the 10-minute CPU budget); ``tiny`` is for
#: the self-tests.
FLAVORS: dict[str, Flavor] = _flavors(
    Flavor("seed", d_model=512, n_heads=4, depth=12, batch=1, seq_len=4096, dtype="bfloat16",
           cpu_mode="estimate"),
    Flavor("small", d_model=128, n_heads=4, depth=4, batch=1, seq_len=2048),
    Flavor("tiny", d_model=32, n_heads=2, depth=3, batch=2, seq_len=16),
)


def get_flavor(name: str) -> Flavor:
    """Look up a flavor by name, or raise a ValueError listing the valid names.

    ``FLAVORS`` holds every registered family's flavors (``ac_bench.models.families.register_family``
    adds them); the ones above are the notebook family's."""
    try:
        return FLAVORS[name]
    except KeyError:
        hint = next((f"; {prefix}* flavors come with their families: add --model-spec {spec} (pytest bench/, "
                     f"torchrun -m ac_bench.distributed, and the plan, frontier, sweep and analytic commands)"
                     for prefix, spec in SPEC_OF_PREFIX.items()
                     if name.startswith(prefix) and spec.split(":")[0] not in sys.modules), "")
        raise ValueError(
            f"unknown flavor {name!r}; valid names: {', '.join(FLAVORS)}{hint}"
        ) from None


#: Flavor name prefixes of the families shipped outside the default registry, and the
#: ``--model-spec`` that registers them (named in ``get_flavor``'s error until it is imported).
SPEC_OF_PREFIX: dict[str, str] = {"hf-": "ac_bench.models.hf:ALL", "tt-": "ac_bench.models.titan:ALL"}


def resolve_dtype(flavor: Flavor, device: str | torch.device) -> torch.dtype:
    """The flavor's compute dtype on ``device`` (bf16 -> fp16 on CUDA without bf16)."""
    dtype = getattr(torch, flavor.dtype)
    if (
        dtype is torch.bfloat16
        and torch.device(device).type == "cuda"
        and not torch.cuda.is_bf16_supported()
    ):
        return torch.float16
    return dtype


def build_transformer(flavor: Flavor, attention: str, dropout: float = 0.0) -> Transformer:
    """The notebook's family: ``flavor.depth`` pre-LayerNorm blocks (``ac_bench.models.families`` sets
    the device and default dtype around this call)."""
    return Transformer(flavor.d_model, flavor.n_heads, flavor.depth, attention, dropout)
