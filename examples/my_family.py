"""A user's own model family: ``pytest bench/ --model-spec examples.my_family:SPEC``."""
import torch
import torch.nn.functional as F
from torch import nn

from ac_bench.models import Family, Flavor


class Residual(nn.Module):  # x + f(LayerNorm(x)): the unit a policy wraps
    def __init__(self, d: int, f: nn.Module, dropout: float):
        super().__init__()
        self.norm, self.f, self.drop = nn.LayerNorm(d), f, nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        return x + self.drop(self.f(self.norm(x)))


class CausalAttention(nn.Module):
    def __init__(self, d: int, heads: int, attention: str):
        super().__init__()
        self.qkv, self.out, self.heads, self.attention = nn.Linear(d, 3 * d), nn.Linear(d, d), heads, attention

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.attention == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # eager: the heads x seq x seq probabilities are materialised
            mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
            o = (q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5).masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.out(o.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):  # the sublayers a policy may wrap: attn, mlp
    def __init__(self, f: Flavor, attention: str, dropout: float):
        super().__init__()
        d = f.d_model
        self.attn = Residual(d, CausalAttention(d, f.n_heads, attention), dropout)
        self.mlp = Residual(d, nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)), dropout)

    def forward(self, x):
        return self.mlp(self.attn(x))


class MyGPT(nn.Module):  # the contract: model.blocks, run in sequence by forward
    def __init__(self, f: Flavor, attention: str, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(f, attention, dropout) for _ in range(f.depth))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


SPEC = Family("my-gpt", build=MyGPT, flavors=(
    Flavor("my-gpt-tiny", d_model=64, n_heads=4, depth=3, batch=1, seq_len=128, family="my-gpt"),
))
