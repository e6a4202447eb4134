"""Analytic model: bytes saved for backward and FLOPs, predicted from the shape alone.

Per family (``ac_bench.models.families.Family.analytic``): a ``FamilyCounts`` gives one sublayer's
bytes and FLOPs; the functions here compose them over the blocks for every policy kind (which
sublayers are checkpointed, sequential segments, early stop), so a family's model is only
its per-sublayer counts. This module holds the notebook family's (``TransformerCounts``,
below); ``ac_bench.analytic.llama`` the llama family's. A family without one raises
``NotModelled``, and the tests that need it skip with that reason.

The notebook's block. In the spirit of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", who count s*b*h*(34 + 5*a*s/h) bytes per GPT layer in 16-bit with dropout
and GeLU), counted for this block: pre-LN, ReLU, no dropout. Notation: b batch, s sequence,
d model width, h heads, e bytes per element, t bytes per LayerNorm statistic. One ``bsd``
is one activation of the residual stream.

Attention sublayer ``x + out_proj(attn(in_proj(LN1(x))))``, tensors kept for backward:
    x (LN1 input) 1 bsd, LN1 mean+rstd 2*b*s*t, LN1 output (in_proj input) 1 bsd,
    the packed q|k|v projection (kept by the attention matmuls through views) 3 bsd,
    out_proj's input (heads merged) 1 bsd, and
      eager: q*scale (QK^T input) 1 bsd + the softmax probabilities b*h*s^2*e;
      sdpa:  logsumexp b*h*s*4 (always fp32); the kernel's output is laid out so that
             merging the heads is a view, so it is the same storage as out_proj's input.
    => eager 7*bsd*e + 2*b*s*t + b*h*s^2*e;  sdpa 6*bsd*e + 2*b*s*t + 4*b*h*s
MLP sublayer ``x + fc2(relu(fc1(LN2(x))))``:
    x 1 bsd, LN2 mean+rstd, LN2 output (fc1 input) 1 bsd, ReLU output (kept by ReLU's backward
    and as fc2's input: one storage) 4 bsd.  => 6*bsd*e + 2*b*s*t
A checkpointed sublayer keeps only its input, 1 bsd (``torch.utils.checkpoint`` saves the
inputs of the region for recomputation). The model input is not counted (it is the user's
tensor, not an activation), so block 0's attention sublayer counts one bsd less.

FLOPs follow FlopCounterMode's convention (2*m*n*k per matmul, only matmul-like ops):
forward attention 8*b*s*d^2 (in_proj 6, out_proj 2) + 4*b*s^2*d (QK^T, PV);
forward MLP 16*b*s*d^2. Backward of a linear layer costs twice its forward; backward of eager
attention's two bmms twice theirs; the fused SDPA backward counts 2.5 times its forward (it
recomputes the scores). Checkpointing adds one forward of each checkpointed sublayer, less its
last matmul: non-reentrant checkpointing stops recomputing as soon as every tensor backward
needs is back (``torch.utils.checkpoint``'s early stop, on by default), and the output of
out_proj or fc2 is not needed by any backward. So attention recomputes 6*b*s*d^2 + 4*b*s^2*d
and the MLP only fc1's 8*b*s*d^2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ac_bench.models import FLAVORS, SUBLAYERS, Flavor, Policy, RegionAC, SelectiveAC, get_policy
from ac_bench.models.ac import CORE_ATTENTION_OPS, SAC_SAVE_OPS
from ac_bench.models.families import FAMILIES, family_of, resolve_reference


class NotModelled(ValueError):
    """The analytic model has no count for this policy (a user's own save list, say) or this
    family (a user's own model without an analytic model)."""


@dataclass(frozen=True)
class Shape:
    """Everything the prediction depends on. ``family`` picks the per-sublayer counts;
    ``n_kv_heads`` and ``ffn_dim`` are read by the families that have them (llama)."""

    batch: int
    seq_len: int
    d_model: int
    n_heads: int
    depth: int
    elem_bytes: int
    ln_stat_bytes: int
    device_type: str = "cpu"
    family: str = "transformer"
    n_kv_heads: int = 0
    ffn_dim: int = 0

    @classmethod
    def of(cls, flavor: Flavor, dtype: torch.dtype, device_type: str) -> "Shape":
        """The flavor's shape at ``dtype``; LayerNorm keeps fp32 statistics on CUDA and
        statistics in the input dtype on the CPU (and under fake CPU tensors)."""
        elem = torch.empty((), dtype=dtype).element_size()
        shape = cls(flavor.batch, flavor.seq_len, flavor.d_model, flavor.n_heads, flavor.depth,
                    elem_bytes=elem, ln_stat_bytes=4 if device_type == "cuda" else elem, device_type=device_type,
                    family=flavor.family)
        counts = _counts_or_none(shape)
        return counts.complete(shape, flavor) if counts is not None else shape

    @classmethod
    def of_record(cls, record) -> "Shape":
        """The shape a measurement record (``ac_bench.record.Measurement``) was taken at, from
        the record alone: its family and the shape fields that family adds (``family_shape``);
        for records older than schema version 4, which lack them, from the registered flavor of
        that name (the notebook's family where none is registered)."""
        dtype = getattr(torch, record.dtype)
        device_type = record.device.split(":")[0]
        if record.family is not None:
            own = {f.name for f in dataclasses.fields(Flavor)}
            extra = {k: v for k, v in (record.family_shape or {}).items() if k in own}
            flavor = Flavor(record.flavor, record.d_model, record.n_heads, record.depth, record.batch, record.seq_len,
                            family=record.family, **extra)
        else:
            flavor = FLAVORS.get(record.flavor) or Flavor(record.flavor, record.d_model, record.n_heads, record.depth,
                                                          record.batch, record.seq_len)
        flavor = dataclasses.replace(flavor, batch=record.batch, seq_len=record.seq_len, d_model=record.d_model,
                                     n_heads=record.n_heads, depth=record.depth)
        return cls.of(flavor, dtype, device_type)

    @property
    def residual_bytes(self) -> int:
        """One activation of the residual stream, b*s*d*e."""
        return self.batch * self.seq_len * self.d_model * self.elem_bytes

    @property
    def ln_stats_bytes(self) -> int:
        """LayerNorm's saved mean and rstd."""
        return 2 * self.batch * self.seq_len * self.ln_stat_bytes


class FamilyCounts:
    """One family's analytic model: the bytes one sublayer keeps and the FLOPs it costs.

    The composition over blocks and policies (``kept_bytes``, ``recompute_flops``,
    ``step_flops``) is shared. ``sac`` and ``core`` name the two modelled selective save lists
    (torchtitan's and core_attn's); a family that cannot count one raises NotModelled.
    """

    def complete(self, shape: Shape, flavor: Flavor) -> Shape:
        """``shape`` with the family's own settings filled in from ``flavor``."""
        return shape

    def parameter_bytes(self, shape: Shape) -> int:
        raise NotImplementedError

    def block_parameter_shapes(self, shape: Shape) -> list[tuple[int, ...]]:
        """The shapes of one block's parameters (the order does not matter: only sums are taken)."""
        raise NotImplementedError

    def buffer_bytes(self, shape: Shape, attention: str) -> int:
        """Bytes of the model's buffers (never sharded by FSDP2): none in the notebook's block."""
        return 0

    def attention_score_bytes(self, shape: Shape, attention: str) -> int:
        """The attention-specific term: eager's probabilities or sdpa's logsumexp."""
        raise NotImplementedError

    def sublayer_saved_bytes(self, shape: Shape, sublayer: str, attention: str) -> int:
        """Bytes a sublayer keeps for backward without checkpointing, its input included."""
        raise NotImplementedError

    def selective_bytes(self, shape: Shape, save_list: str, sublayer: str, attention: str) -> int:
        """Bytes a sublayer checkpointed with a selective save list keeps, its input included."""
        raise NotImplementedError

    def sublayer_forward_flops(self, shape: Shape, sublayer: str) -> int:
        raise NotImplementedError

    def sublayer_backward_flops(self, shape: Shape, sublayer: str, attention: str) -> int:
        raise NotImplementedError

    def sublayer_recompute_flops(self, shape: Shape, sublayer: str) -> int:
        """FLOPs recomputed for a checkpointed sublayer (up to the last tensor backward needs)."""
        raise NotImplementedError

    def selective_recompute_flops(self, shape: Shape, save_list: str, sublayer: str, attention: str) -> int:
        raise NotImplementedError

    def input_not_kept_bytes(self, shape: Shape) -> int:
        """What block 0's attention, run without checkpointing, keeps less than another
        block's: its input, which is the model's (not an activation, not counted)."""
        return shape.residual_bytes

    def score_crossover_seq(self, shape: Shape) -> float:
        """The sequence length at which eager attention's probabilities overtake the rest of
        what its sublayer keeps (which grows linearly with it)."""
        scores = self.attention_score_bytes(shape, "eager")
        rest = self.sublayer_saved_bytes(shape, "attn", "eager") - scores
        return shape.seq_len * rest / scores


#: What a check against this model says when a measurement leaves it: the model is counted by
#: hand, so accepting new baselines does not change it.
CHANGE_WITH_THE_POLICY = ("The model counts by hand what each policy saves, op by op (ac_bench.analytic): a policy "
                          "or model whose saved tensors changed on purpose needs the model changed with it; "
                          "--update-baselines does not")


#: The analytic models of the suite's own families, by family name (``module:attribute``,
#: imported when first needed); a user's family gives its own as ``Family.analytic``.
BUILTIN_MODELS: dict[str, str] = {
    "transformer": "ac_bench.analytic:TRANSFORMER_COUNTS",
    "llama": "ac_bench.analytic.llama:LLAMA_COUNTS",
}


def family_model(family) -> FamilyCounts | None:
    """The analytic model of ``family`` (an ``ac_bench.models.Family``): its own
    ``analytic``, else the suite's for a built-in family, else None."""
    return resolve_reference(family.analytic if family.analytic is not None else BUILTIN_MODELS.get(family.name))


def _counts_or_none(shape: Shape) -> FamilyCounts | None:
    family = FAMILIES.get(shape.family)
    if family is None:
        raise NotModelled(f"family {shape.family!r} is not registered, so it has no analytic model")
    return family_model(family)


def counts(shape: Shape) -> FamilyCounts:
    """The analytic model of the shape's family, or NotModelled saying the family has none."""
    model = _counts_or_none(shape)
    if model is None:
        raise NotModelled(f"family {shape.family!r} declares no analytic model, so the analytic checks "
                          f"(bytes kept, FLOPs, orders derived from them) do not apply to it")
    return model


def not_modelled_reason(flavor: Flavor, policy: Policy | str | None = None) -> str | None:
    """Why the analytic checks do not apply to ``flavor`` (its family declares no analytic
    model) or to ``policy`` (its kind declares no ``composition``, or a selective policy's save
    list is not modelled), or None where they do: the tests skip with this reason."""
    family = family_of(flavor)
    if family_model(family) is None:
        return (f"family {family.name!r} declares no analytic model, so the checks against it (bytes kept, "
                f"FLOPs, the orders derived from them) do not apply; its figures are still measured and gated")
    if policy is None:
        return None
    policy = _policy(policy)
    if policy.composition is None:
        return (f"policy {policy.name!r}: its kind {policy.kind!r} declares no analytic composition, so the checks "
                f"against the analytic model do not apply to it; its figures are still measured and gated")
    if isinstance(policy, SelectiveAC):
        try:
            _sac_list(policy)
        except NotModelled as exc:
            return f"{exc}; its figures are still measured and gated"
    return None


def parameter_bytes(shape: Shape) -> int:
    """Parameter bytes of the whole model."""
    return counts(shape).parameter_bytes(shape)


def block_parameter_shapes(shape: Shape) -> list[tuple[int, ...]]:
    """The parameter shapes of one block of the shape's family (``FamilyCounts.block_parameter_shapes``)."""
    return counts(shape).block_parameter_shapes(shape)


def sharded_parameter_bytes(shape: Shape, world_size: int) -> int:
    """One rank's share of the parameters under FSDP2, which shards every parameter along dim 0
    and pads dim 0 to a multiple of the world size: ceil(dim0 / W) rows per rank (its storage),
    summed over the model. Exactly ``parameter_bytes / W`` when W divides every dim 0."""
    rows = sum(-(-s[0] // world_size) * (s[1] if len(s) > 1 else 1) for s in block_parameter_shapes(shape))
    return shape.depth * rows * shape.elem_bytes


def optimizer_step_counter_bytes(shape: Shape) -> int:
    """AdamW's ``step``: one fp32 scalar tensor per parameter tensor, not sharded."""
    return shape.depth * len(block_parameter_shapes(shape)) * 4


def sharded_resident_bytes(shape: Shape, world_size: int, attention: str = "sdpa") -> int:
    """What one rank holds between steps under FSDP2 with AdamW (``resident_bytes``): its shard of
    the parameters, of their gradients and of AdamW's two moments (each ``sharded_parameter_bytes``),
    the step counters, the model's buffers whole (``FamilyCounts.buffer_bytes``: llama's RoPE
    tables, and eager's causal mask) and its own input (``shape.batch`` is the per-rank batch).
    At W = 1 this is the single process's resident state."""
    return (4 * sharded_parameter_bytes(shape, world_size) + optimizer_step_counter_bytes(shape)
            + counts(shape).buffer_bytes(shape, attention) + shape.residual_bytes)


def fsdp_unsharded_peak_bytes(shape: Shape, world_size: int = 1) -> int:
    """What FSDP2 holds unsharded at the step's peak (in backward), per rank: one block's full
    parameters (``unsharded_parameters``) and, beside them, the all-gather buffer they were
    copied out of (``all_gather``), each one block's parameters with every dim 0 padded to a
    multiple of ``world_size`` (the all-gather output is W shards of ceil(dim0 / W) rows; at
    ``tiny`` and W = 64, 76,288 B instead of 50,816); the blocks are the FSDP units, resharded
    after their forward and after their backward. ``parameter_bytes / depth`` where W divides
    every dim 0."""
    return world_size * sharded_parameter_bytes(shape, world_size) // shape.depth


def attention_score_bytes(shape: Shape, attention: str) -> int:
    """The attention-specific term: eager's b*h*s^2 probabilities or sdpa's logsumexp."""
    return counts(shape).attention_score_bytes(shape, attention)


def sublayer_saved_bytes(shape: Shape, sublayer: str, attention: str) -> int:
    """Bytes a sublayer keeps for backward without checkpointing, its input included."""
    if sublayer not in SUBLAYERS:
        raise ValueError(f"unknown sublayer {sublayer!r}; valid: {SUBLAYERS}")
    return counts(shape).sublayer_saved_bytes(shape, sublayer, attention)


def score_crossover_seq(shape: Shape) -> float:
    """Sequence length beyond which eager attention's seq^2 term dominates its sublayer."""
    return counts(shape).score_crossover_seq(shape)


def _policy(policy: Policy | str) -> Policy:
    return get_policy(policy) if isinstance(policy, str) else policy


def _sac_list(policy: SelectiveAC) -> str:
    """Which of the modelled save lists ``policy`` uses: ``sac`` or ``core``."""
    if policy.every_second_matmul and tuple(policy.save_ops) == SAC_SAVE_OPS:
        return "sac"
    if policy.every_second_matmul and tuple(policy.save_ops) == CORE_ATTENTION_OPS and policy.sublayers == ("attn",):
        return "core"
    raise NotModelled(f"policy {policy.name!r}: the analytic model covers torchtitan's save list (sac) "
                      f"and core_attn's, not save_ops={policy.save_ops}")


def checkpointed_sublayer_bytes(shape: Shape, policy: RegionAC, sublayer: str, attention: str) -> int:
    """What one checkpointed sublayer keeps: its input, plus what a selective policy saves."""
    if not isinstance(policy, SelectiveAC):
        return shape.residual_bytes
    return counts(shape).selective_bytes(shape, _sac_list(policy), sublayer, attention)


def kept_bytes(shape: Shape, policy: Policy | str, attention: str) -> int:
    """Predicted bytes kept for backward at the end of the forward (``forward_kept_bytes``, and
    ``saved_bytes`` where hooks can see it), the model input excluded."""
    policy = _policy(policy)
    if policy.composition == "offload":
        # On CUDA everything saved goes to host memory; on the CPU the host is the device.
        return 0 if shape.device_type == "cuda" else kept_bytes(shape, "none", attention)
    full = {sl: sublayer_saved_bytes(shape, sl, attention) for sl in SUBLAYERS}
    # The model input is excluded: a checkpointed first region keeps only it, an unwrapped
    # block 0 attention keeps what the family says it does not (input_not_kept_bytes).
    input_excluded = (shape.residual_bytes, counts(shape).input_not_kept_bytes(shape))
    if policy.composition == "sequential":
        segments = policy.segment_ranges(shape.depth)
        total = sum(shape.residual_bytes if checkpointed else len(blocks) * sum(full.values())
                    for blocks, checkpointed in segments)
        return total - input_excluded[0 if segments[0][1] else 1]
    if policy.composition == "regions":
        total = 0
        for block in range(shape.depth):
            for sublayer in SUBLAYERS:
                if policy.is_checkpointed(block, sublayer, shape.depth):
                    total += checkpointed_sublayer_bytes(shape, policy, sublayer, attention)
                else:
                    total += full[sublayer]
        return total - input_excluded[0 if policy.is_checkpointed(0, "attn", shape.depth) else 1]
    raise NotModelled(f"policy {policy.name!r} of kind {policy.kind!r} has no analytic model")


def sublayer_forward_flops(shape: Shape, sublayer: str) -> int:
    """Matmul FLOPs of one sublayer's forward (identical for eager and sdpa)."""
    if sublayer not in SUBLAYERS:
        raise ValueError(f"unknown sublayer {sublayer!r}; valid: {SUBLAYERS}")
    return counts(shape).sublayer_forward_flops(shape, sublayer)


def sublayer_backward_flops(shape: Shape, sublayer: str, attention: str) -> int:
    """Matmul FLOPs of one sublayer's backward."""
    return counts(shape).sublayer_backward_flops(shape, sublayer, attention)


def sublayer_recompute_flops(shape: Shape, sublayer: str) -> int:
    """FLOPs recomputed for one checkpointed sublayer (early stop: up to, not including, its
    last matmul where no backward needs that matmul's output)."""
    return counts(shape).sublayer_recompute_flops(shape, sublayer)


def checkpointed_sublayer_recompute_flops(shape: Shape, policy: RegionAC, sublayer: str, attention: str) -> int:
    """Recompute FLOPs of one checkpointed sublayer under ``policy`` (a selective policy
    recomputes no op whose output it saved)."""
    if not isinstance(policy, SelectiveAC):
        return sublayer_recompute_flops(shape, sublayer)
    return counts(shape).selective_recompute_flops(shape, _sac_list(policy), sublayer, attention)


def recompute_flops(shape: Shape, policy: Policy | str, attention: str) -> int:
    """FLOPs of the forward passes the policy recomputes during backward."""
    policy = _policy(policy)
    if policy.composition == "offload":
        return 0
    if policy.composition == "sequential":
        # A checkpointed segment recomputes all its blocks, its last block's MLP only up to
        # what that MLP's backward needs (early stop), as a checkpointed MLP does.
        per_block = sum(sublayer_forward_flops(shape, sl) for sl in SUBLAYERS)
        mlp_tail = sublayer_forward_flops(shape, "mlp") - sublayer_recompute_flops(shape, "mlp")
        return sum(len(blocks) * per_block - mlp_tail
                   for blocks, checkpointed in policy.segment_ranges(shape.depth) if checkpointed)
    if policy.composition == "regions":
        return sum(
            checkpointed_sublayer_recompute_flops(shape, policy, sublayer, attention)
            for block in range(shape.depth)
            for sublayer in SUBLAYERS
            if policy.is_checkpointed(block, sublayer, shape.depth)
        )
    raise NotModelled(f"policy {policy.name!r} of kind {policy.kind!r} has no analytic model")


def step_flops(shape: Shape, policy: Policy | str, attention: str) -> int:
    """Matmul FLOPs of one forward + backward, recomputation included."""
    base = shape.depth * sum(
        sublayer_forward_flops(shape, sl) + sublayer_backward_flops(shape, sl, attention)
        for sl in SUBLAYERS
    )
    return base + recompute_flops(shape, policy, attention)


class TransformerCounts(FamilyCounts):
    """The notebook's block, as counted in this module's docstring."""

    def parameter_bytes(self, shape: Shape) -> int:
        """Per block: two LayerNorms (4d), in_proj (3d^2+3d), out_proj (d^2+d), fc1 (4d^2+4d), fc2 (4d^2+d)."""
        d = shape.d_model
        return shape.depth * (12 * d * d + 13 * d) * shape.elem_bytes

    def block_parameter_shapes(self, shape: Shape) -> list[tuple[int, ...]]:
        """In ``named_parameters`` order: LN1, in_proj, out_proj, LN2, fc1, fc2 (weights and biases)."""
        d = shape.d_model
        return [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]

    def attention_score_bytes(self, shape: Shape, attention: str) -> int:
        if attention == "eager":
            return shape.batch * shape.n_heads * shape.seq_len ** 2 * shape.elem_bytes
        return shape.batch * shape.n_heads * shape.seq_len * 4

    def sublayer_saved_bytes(self, shape: Shape, sublayer: str, attention: str) -> int:
        if sublayer == "attn":
            projections = 7 if attention == "eager" else 6
            return (projections * shape.residual_bytes + shape.ln_stats_bytes
                    + self.attention_score_bytes(shape, attention))
        return 6 * shape.residual_bytes + shape.ln_stats_bytes

    def selective_bytes(self, shape: Shape, save_list: str, sublayer: str, attention: str) -> int:
        """sac: attention keeps the packed q|k|v (in_proj, the first matmul) and, with sdpa, the
        fused kernel's output and logsumexp; the MLP keeps fc1's output (4 bsd); the second
        matmul, the LayerNorms and eager attention's scores are recomputed. core_attn:
        LayerNorm output and statistics and the packed q|k|v. Both plus the input."""
        if save_list == "core":
            return 5 * shape.residual_bytes + shape.ln_stats_bytes
        if sublayer == "attn":
            kept = 4 * shape.residual_bytes
            return kept + (shape.residual_bytes + self.attention_score_bytes(shape, "sdpa") if attention == "sdpa" else 0)
        return 5 * shape.residual_bytes

    def sublayer_forward_flops(self, shape: Shape, sublayer: str) -> int:
        b, s, d = shape.batch, shape.seq_len, shape.d_model
        if sublayer == "attn":
            return 8 * b * s * d * d + 4 * b * s * s * d
        return 16 * b * s * d * d

    def sublayer_backward_flops(self, shape: Shape, sublayer: str, attention: str) -> int:
        b, s, d = shape.batch, shape.seq_len, shape.d_model
        if sublayer == "mlp":
            return 2 * self.sublayer_forward_flops(shape, "mlp")
        linear = 2 * 8 * b * s * d * d
        scores = 4 * b * s * s * d
        return linear + (2 * scores if attention == "eager" else 5 * scores // 2)

    def sublayer_recompute_flops(self, shape: Shape, sublayer: str) -> int:
        """Its forward up to, not including, the last matmul (out_proj / fc2), whose output no
        backward needs (early stop)."""
        b, s, d = shape.batch, shape.seq_len, shape.d_model
        last_matmul = 2 * b * s * d * d if sublayer == "attn" else 8 * b * s * d * d
        return self.sublayer_forward_flops(shape, sublayer) - last_matmul

    def selective_recompute_flops(self, shape: Shape, save_list: str, sublayer: str, attention: str) -> int:
        """sac recomputes eager attention's QK^T and PV (4*b*s^2*d) and nothing matmul-sized
        with sdpa (the fused kernel's outputs are saved) or in the MLP; core_attn recomputes
        the attention core, QK^T and PV or the fused kernel's forward (4*b*s^2*d)."""
        core = 4 * shape.batch * shape.seq_len ** 2 * shape.d_model
        if save_list == "core" or (sublayer == "attn" and attention == "eager"):
            return core
        return 0

    def score_crossover_seq(self, shape: Shape) -> float:
        """7*b*s*d*e (the rest of eager attention) = b*h*s^2*e at s = 7*d/h."""
        return 7 * shape.d_model / shape.n_heads


TRANSFORMER_COUNTS = TransformerCounts()


def explain(flavor: Flavor, dtype: torch.dtype, device_type: str = "cuda",
            seq_lens: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)) -> str:
    """The README's answer, from the model: per-block saved bytes by sublayer, what
    checkpointing each saves, and how each term grows with the sequence length."""
    mib = 2 ** 20
    shape = Shape.of(flavor, dtype, device_type)
    extra = f", kv heads {shape.n_kv_heads}, ffn {shape.ffn_dim}" if shape.family != "transformer" else ""
    lines = [f"flavor {flavor.name} (family {shape.family}): batch {shape.batch}, seq {shape.seq_len}, "
             f"d_model {shape.d_model}, heads {shape.n_heads}{extra}, depth {shape.depth}, "
             f"{str(dtype).removeprefix('torch.')} ({shape.elem_bytes} B/element), "
             + (f"LayerNorm statistics {shape.ln_stat_bytes} B ({device_type})" if shape.family == "transformer"
                else f"RMSNorm in float32 ({device_type})"),
             "", "saved for backward per block, MiB (a checkpointed sublayer keeps only its input: "
             f"{shape.residual_bytes / mib:.2f} MiB)"]
    for attention in ("eager", "sdpa"):
        attn = sublayer_saved_bytes(shape, "attn", attention)
        mlp = sublayer_saved_bytes(shape, "mlp", attention)
        saving = {s: (kept_bytes(shape, "none", attention) - kept_bytes(shape, s, attention)) / mib
                  for s in ("attn", "mlp")}
        lines.append(f"  {attention:5}: attention {attn / mib:8.2f} (of which scores {attention_score_bytes(shape, attention) / mib:7.2f})"
                     f"   MLP {mlp / mib:7.2f}   -> checkpointing attention saves {saving['attn']:8.2f} MiB, "
                     f"the MLP {saving['mlp']:7.2f} MiB ({saving['attn'] / saving['mlp']:.1f}x)")
    lines += ["", "growth with the sequence length, per block, MiB:",
              f"  {'seq':>6} {'eager scores':>13} {'sdpa logsumexp':>15} {'attention rest':>15} {'MLP':>8}"]
    for s in seq_lens:
        sh = dataclasses.replace(shape, seq_len=s)
        rest = sublayer_saved_bytes(sh, "attn", "eager") - attention_score_bytes(sh, "eager")
        lines.append(f"  {s:>6} {attention_score_bytes(sh, 'eager') / mib:>13.2f} {attention_score_bytes(sh, 'sdpa') / mib:>15.3f}"
                     f" {rest / mib:>15.2f} {sublayer_saved_bytes(sh, 'mlp', 'eager') / mib:>8.2f}")
    lines.append(f"  eager scores (h*s^2*e) overtake the rest of the attention sublayer at s = "
                 f"{score_crossover_seq(shape):.0f}")
    return "\n".join(lines)

