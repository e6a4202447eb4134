"""A Llama-style decoder block stack, in the style of torchtitan's llama3 model and gpt-fast.

Per block, two separately wrappable sublayers (as in the notebook's family, so every policy
applies unchanged):

- ``attn``: ``x + wo(attention(rope(wq(n)), rope(wk(n)), wv(n)))`` with ``n = RMSNorm(x)``:
  no biases, rotary position embeddings on q and k, grouped-query attention (``n_kv_heads``
  key/value heads shared by ``n_heads // n_kv_heads`` query heads each), causal.
  ``sdpa``: ``scaled_dot_product_attention(..., is_causal=True, enable_gqa=True)``, which keeps
  the grouped K/V at their own size (the CPU flash kernel takes them as they are in torch
  2.13). ``eager``: K/V repeated to every query head (torchtitan's ``repeat_kv``, gpt-fast's
  ``repeat_interleave``), scores ``q @ k^T * scale`` plus a causal ``-inf`` mask, softmax in
  the compute dtype, the heads x seq x seq probabilities materialised, ``probs @ v``.
- ``mlp``: ``x + w2(silu(w1(n)) * w3(n))`` with ``n = RMSNorm(x)`` (SwiGLU), hidden size
  ``int(2 * 4 * d / 3)`` times ``ffn_dim_multiplier``, rounded up to ``multiple_of``.

RoPE is the real (cos, sin) formulation that rotates the two halves of each head
(``rotate_half``, as in Hugging Face's Llama); torchtitan's complex formulation rotates
interleaved pairs, which differs only by a fixed permutation of wq's and wk's output rows.
cos, sin and the causal mask are precomputed for the flavor's length as non-persistent
buffers (not in the state dict, not activations). Dropout, for the gradient tests only, is
applied to each sublayer's output before the residual add.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ac_bench.models.transformer import Flavor, check_attention


def ffn_hidden_dim(flavor: Flavor) -> int:
    """torchtitan's llama3 rule: ``int(2 * 4d / 3)``, times the multiplier, rounded up."""
    hidden = int(2 * 4 * flavor.d_model / 3)
    if flavor.ffn_dim_multiplier is not None:
        hidden = int(flavor.ffn_dim_multiplier * hidden)
    return flavor.multiple_of * ((hidden + flavor.multiple_of - 1) // flavor.multiple_of)


def kv_heads(flavor: Flavor) -> int:
    """Key/value heads: ``n_kv_heads``, or ``n_heads`` when not grouped."""
    return flavor.n_kv_heads or flavor.n_heads


def llama_shape(flavor: Flavor) -> dict:
    """The shape fields the llama family adds, as a record stores them: K/V heads, the SwiGLU
    hidden size (``mlp_hidden``) and the settings it derives from, RoPE's base, RMSNorm's epsilon."""
    return {"n_kv_heads": kv_heads(flavor), "mlp_hidden": ffn_hidden_dim(flavor), "multiple_of": flavor.multiple_of,
            "ffn_dim_multiplier": flavor.ffn_dim_multiplier, "rope_theta": flavor.rope_theta, "norm_eps": flavor.norm_eps}


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    """``x + wo(attention(rope(q), rope(k), v))`` over ``RMSNorm(x)``, grouped K/V, causal."""

    def __init__(self, flavor: Flavor, attention: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = check_attention(attention)
        d, self.n_heads, self.n_kv_heads = flavor.d_model, flavor.n_heads, kv_heads(flavor)
        if d % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"flavor {flavor.name!r}: d_model must divide into n_heads, and n_heads into n_kv_heads")
        self.head_dim = d // self.n_heads
        self.norm = nn.RMSNorm(d, eps=flavor.norm_eps)
        self.wq = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Precomputed in float32, stored in the compute dtype (the default dtype while built).
        s, hd = flavor.seq_len, self.head_dim
        inv_freq = 1.0 / (flavor.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        angles = torch.outer(torch.arange(s, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # (s, hd): both halves rotate by the same angle
        self.register_buffer("cos", angles.cos().to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("sin", angles.sin().to(torch.get_default_dtype()), persistent=False)
        if attention == "eager":
            mask = torch.full((s, s), float("-inf")).triu(1)
            self.register_buffer("causal_mask", mask.to(torch.get_default_dtype()), persistent=False)

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        """(b, s, heads, hd): rotate each head's halves by the position's angles."""
        s = x.shape[1]
        # In x's dtype: the same tensors unless FSDP2's mixed precision computes in another one.
        cos, sin = self.cos[:s, None, :].to(x.dtype), self.sin[:s, None, :].to(x.dtype)
        return x * cos + rotate_half(x) * sin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        n = self.norm(x)
        q = self.rope(self.wq(n).view(b, s, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.rope(self.wk(n).view(b, s, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.wv(n).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            repeat = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
            scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(self.head_dim)) + self.causal_mask[:s, :s].to(q.dtype)
            out = torch.softmax(scores, dim=-1) @ v
        return x + self.drop(self.wo(out.transpose(1, 2).reshape(b, s, -1)))


class LlamaMLP(nn.Module):
    """SwiGLU: ``x + w2(silu(w1(n)) * w3(n))`` over ``n = RMSNorm(x)``."""

    def __init__(self, flavor: Flavor, dropout: float = 0.0) -> None:
        super().__init__()
        d, hidden = flavor.d_model, ffn_hidden_dim(flavor)
        self.norm = nn.RMSNorm(d, eps=flavor.norm_eps)
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        return x + self.drop(self.w2(F.silu(self.w1(n)) * self.w3(n)))


class LlamaBlock(nn.Module):
    """One pre-norm Llama block; ``attn`` and ``mlp`` are separately wrappable sublayers."""

    def __init__(self, flavor: Flavor, attention: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = LlamaAttention(flavor, attention, dropout)
        self.mlp = LlamaMLP(flavor, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))


class Llama(nn.Module):
    """``flavor.depth`` Llama blocks in sequence (no embedding, final norm or head, like the
    notebook's model: the loss is ``output.mean()``)."""

    def __init__(self, flavor: Flavor, attention: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(LlamaBlock(flavor, attention, dropout) for _ in range(flavor.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def build_llama(flavor: Flavor, attention: str, dropout: float = 0.0) -> Llama:
    """The llama family's builder (``ac_bench.models.families`` sets device and default dtype)."""
    return Llama(flavor, attention, dropout)


#: One line per flavor. ``llama-small`` is measured for real on the CPU; ``llama3-8b-4l`` is
#: four Llama-3-8B blocks (torchtitan's 8B config: d 4096, 32 heads, 8 KV heads, SwiGLU
#: hidden 14336) at seq 8192 in bf16, estimated on fake tensors on the CPU.
LLAMA_FLAVORS: tuple[Flavor, ...] = (
    Flavor("llama-small", d_model=128, n_heads=4, depth=4, batch=1, seq_len=512, family="llama",
           n_kv_heads=2, multiple_of=64),
    Flavor("llama3-8b-4l", d_model=4096, n_heads=32, depth=4, batch=1, seq_len=8192, dtype="bfloat16",
           cpu_mode="estimate", family="llama", n_kv_heads=8, multiple_of=1024, ffn_dim_multiplier=1.3),
)
