"""The llama family's analytic model (``ac_bench.models.llama``), counted op by op like ac_bench/analytic.

Notation: b batch, s sequence, d model width, h heads, k key/value heads, hd = d/h head size,
dk = k*hd the grouped K/V width, f the SwiGLU hidden size, e bytes per element, a = max(e, 4)
bytes per element of RMSNorm's float32 computation. One ``bsd`` is one activation of the
residual stream, b*s*d*e.

RMSNorm (``nn.RMSNorm``, composite on the CPU in torch 2.13: in float32,
``x.float() * rsqrt(mean(x^2) + eps)``, then times the weight in the compute dtype) keeps x in
float32 (for pow; in fp32 that is x itself, in bf16 a float32 copy) b*s*d*a, rstd b*s*a (for
the multiplication by it), the normalised x b*s*d*a (for the weight's gradient), and its output
n is kept by what consumes it: ``norm = 2*b*s*d*a + b*s*a`` plus n. When x needs no gradient
(the model input, block 0's attention) only the normalised x is kept: x (the model input, not
counted) or its copy and rstd are not saved, b*s*d*a + b*s*a less.

Attention sublayer ``x + wo(attn(rope(wq(n)), rope(wk(n)), wv(n)))``, ``n = RMSNorm(x)``:
    RMSNorm's ``norm``, n 1 bsd (the input of wq, wk and wv: one storage), the merged heads
    (wo's input) 1 bsd; RoPE's multiplications keep only cos and sin
    (buffers, not activations), so the un-rotated q and k are not kept, and
      sdpa:  the rotated q 1 bsd, the rotated k and v at the grouped width 2*b*s*dk
             (``enable_gqa``: nothing is repeated), the logsumexp b*h*s*4 (fp32); the kernel's
             output is wo's input through a view;
      eager: q @ k^T keeps a contiguous copy of the rotated q 1 bsd and the repeated k 1 bsd,
             probs @ v the repeated v 1 bsd and the softmax probabilities b*h*s^2*e (which
             softmax's backward keeps too: one storage); the scale and the additive causal mask
             keep nothing.
    => sdpa norm + 4*bsd + 2*b*s*dk*e + 4*b*h*s;  eager norm + 6*bsd + b*h*s^2*e
MLP sublayer ``x + w2(silu(w1(n)) * w3(n))``:
    RMSNorm's ``norm``, n 1 bsd, w1's output (silu's input), silu's output and w3's output (the
    product's inputs), the product (w2's input): 4 bsf.  => norm + 1*bsd + 4*b*s*f*e
A checkpointed sublayer keeps its input, 1 bsd; the model input is not counted, and block 0's
attention, when not checkpointed, keeps b*s*d*a + b*s*a less (above).

Selective save lists (every second matmul of a region recomputed; the matmuls of a sublayer
are, in order, wq wk wv wo and w1 w3 w2):
    sac: attention keeps wq's output (q before RoPE) 1 bsd and wv's output b*s*dk, with sdpa
    also the kernel's output 1 bsd and logsumexp; the MLP keeps w1's output b*s*f and w2's
    output 1 bsd (the third matmul: saved, although no backward needs it).
    core_attn: RMSNorm is not in its list (it names LayerNorm), so it keeps what sac keeps of
    attention with eager: q and v, whichever the implementation.

FLOPs (FlopCounterMode's convention, 2*m*n*k per matmul; the causal mask does not halve the
count, the SDPA formula counts every score; GQA attention counts h query heads):
    forward attention 4*b*s*d^2 + 4*b*s*d*dk + 4*b*s^2*d; forward MLP 6*b*s*d*f.
    backward: twice the linears' forward; eager's two bmms twice theirs, the fused SDPA
    backward 2.5 times its forward.
    recompute (early stop: no backward needs wo's or w2's output): attention all but wo,
    2*b*s*d^2 + 4*b*s*d*dk + 4*b*s^2*d; MLP w1 and w3, 4*b*s*d*f.
    sac recomputes wk (2*b*s*d*dk) and, with eager, QK^T and PV (4*b*s^2*d); in the MLP w3
    (2*b*s*d*f). core_attn recomputes wk and the attention core: 2*b*s*d*dk + 4*b*s^2*d.
"""

from __future__ import annotations

import dataclasses

from ac_bench.analytic import FamilyCounts, NotModelled, Shape
from ac_bench.models import Flavor
from ac_bench.models.llama import ffn_hidden_dim, kv_heads


class LlamaCounts(FamilyCounts):
    """The counts of this module's docstring."""

    def complete(self, shape: Shape, flavor: Flavor) -> Shape:
        return dataclasses.replace(shape, n_kv_heads=kv_heads(flavor), ffn_dim=ffn_hidden_dim(flavor))

    @staticmethod
    def _dims(shape: Shape) -> tuple[int, int, int, int, int, int]:
        dk = shape.d_model // shape.n_heads * shape.n_kv_heads
        return shape.batch, shape.seq_len, shape.d_model, dk, shape.ffn_dim, shape.elem_bytes

    @staticmethod
    def norm_bytes(shape: Shape) -> int:
        """RMSNorm's float32 input, normalised input and rstd (its output not included)."""
        a = max(shape.elem_bytes, 4)
        return (2 * shape.d_model + 1) * shape.batch * shape.seq_len * a

    def parameter_bytes(self, shape: Shape) -> int:
        """Per block: two RMSNorm weights 2d, wq and wo 2d^2, wk and wv 2*d*dk, w1 w3 w2 3*d*f."""
        b, s, d, dk, f, e = self._dims(shape)
        return shape.depth * (2 * d * d + 2 * d * dk + 3 * d * f + 2 * d) * e

    def block_parameter_shapes(self, shape: Shape) -> list[tuple[int, ...]]:
        """The attention's RMSNorm, wq, wk, wv, wo; the MLP's RMSNorm, w1, w3, w2 (no biases)."""
        b, s, d, dk, f, e = self._dims(shape)
        return [(d,), (d, d), (dk, d), (dk, d), (d, d), (d,), (f, d), (f, d), (d, f)]

    def buffer_bytes(self, shape: Shape, attention: str) -> int:
        """Per block: the RoPE tables ``cos`` and ``sin`` (seq x head_dim each) and, for eager, the
        causal mask (seq x seq), in the compute dtype (``ac_bench.models.llama.LlamaAttention``)."""
        s, hd = shape.seq_len, shape.d_model // shape.n_heads
        return shape.depth * (2 * s * hd + (s * s if attention == "eager" else 0)) * shape.elem_bytes

    def attention_score_bytes(self, shape: Shape, attention: str) -> int:
        if attention == "eager":
            return shape.batch * shape.n_heads * shape.seq_len ** 2 * shape.elem_bytes
        return shape.batch * shape.n_heads * shape.seq_len * 4

    def sublayer_saved_bytes(self, shape: Shape, sublayer: str, attention: str) -> int:
        b, s, d, dk, f, e = self._dims(shape)
        if sublayer == "attn":
            if attention == "eager":
                kept = 5 * b * s * d * e
            else:
                kept = 3 * b * s * d * e + 2 * b * s * dk * e
            return self.norm_bytes(shape) + kept + self.attention_score_bytes(shape, attention)
        return self.norm_bytes(shape) + b * s * d * e + 4 * b * s * f * e

    def input_not_kept_bytes(self, shape: Shape) -> int:
        """Block 0's attention saves neither its input (or its float32 copy) nor rstd."""
        return (shape.d_model + 1) * shape.batch * shape.seq_len * max(shape.elem_bytes, 4)

    def selective_bytes(self, shape: Shape, save_list: str, sublayer: str, attention: str) -> int:
        b, s, d, dk, f, e = self._dims(shape)
        if sublayer == "attn":
            kept = 2 * b * s * d * e + b * s * dk * e  # input, q, v
            if save_list == "sac" and attention == "sdpa":
                kept += b * s * d * e + self.attention_score_bytes(shape, "sdpa")
            return kept
        if save_list == "core":
            raise NotModelled("core_attn does not checkpoint the MLP")
        return 2 * b * s * d * e + b * s * f * e  # input, w1's output, w2's output

    def sublayer_forward_flops(self, shape: Shape, sublayer: str) -> int:
        b, s, d, dk, f, e = self._dims(shape)
        if sublayer == "attn":
            return 4 * b * s * d * d + 4 * b * s * d * dk + 4 * b * s * s * d
        return 6 * b * s * d * f

    def sublayer_backward_flops(self, shape: Shape, sublayer: str, attention: str) -> int:
        b, s, d, dk, f, e = self._dims(shape)
        if sublayer == "mlp":
            return 2 * self.sublayer_forward_flops(shape, "mlp")
        linear = 2 * (4 * b * s * d * d + 4 * b * s * d * dk)
        scores = 4 * b * s * s * d
        return linear + (2 * scores if attention == "eager" else 5 * scores // 2)

    def sublayer_recompute_flops(self, shape: Shape, sublayer: str) -> int:
        b, s, d, dk, f, e = self._dims(shape)
        if sublayer == "attn":
            return 2 * b * s * d * d + 4 * b * s * d * dk + 4 * b * s * s * d
        return 4 * b * s * d * f

    def selective_recompute_flops(self, shape: Shape, save_list: str, sublayer: str, attention: str) -> int:
        b, s, d, dk, f, e = self._dims(shape)
        if sublayer == "mlp":
            return 2 * b * s * d * f
        wk, core = 2 * b * s * d * dk, 4 * b * s * s * d
        return wk + (core if save_list == "core" or attention == "eager" else 0)


LLAMA_COUNTS = LlamaCounts()
