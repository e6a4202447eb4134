"""torchtitan's llama3 as a family: torchtitan's own model code (``torchtitan.models.llama3``),
built from its config classes at a small size with random weights drawn by its own
initialisation, stepped as torchtitan's trainer steps it.

``pytest bench/ --model-spec ac_bench.models.titan:ALL`` runs it (``:LLAMA3`` the same family).
Importing this module needs torchtitan (the ``titan`` extra: torchtitan 0.3.0, which imports
triton); the family registers on import.

What the adapter takes from torchtitan 0.3.0, and what it adds:

- the model: ``Llama3Model.Config(...).build()`` composed as ``torchtitan.models.llama3._debugmodel``
  composes its config (``_build_llama3_layers``, the same parameter initialisers, fused QKV,
  ``ComplexRoPE`` with Llama-3 scaling), at the flavor's sizes, then ``init_states()``, which
  draws the weights by torchtitan's initialisers (``trainer.py`` does the same after
  ``to_empty``); RoPE's table is cut to ``seq_len`` positions, as the trainer's
  ``update_from_config`` cuts it to ``training.seq_len``;
- the step: ``seq_len + 1`` token ids per sequence in; inputs ``ids[:, :-1]``, labels
  ``ids[:, 1:]`` and positions ``0 … seq_len - 1`` (one document per sequence), as
  ``hf_datasets/text_datasets.py`` builds a sample; ``pred = model(inputs, positions=positions)``
  and ``CrossEntropyLoss(pred, labels, global_valid_tokens)`` (``components/loss.py``: summed
  cross-entropy over the vocabulary in float32, divided by the number of labels that are not
  ``IGNORE_INDEX``) out, as ``Trainer._forward_backward_body`` computes it; so the embedding, every
  layer, the final norm, the output head and the loss are measured;
- the layers (``model.blocks``): torchtitan's ``model.layers``, a ``ModuleDict`` keyed ``"0"``,
  ``"1"``, …, the container whose children ``FullAC.apply`` wraps; ``TitanLayers`` reads and
  replaces them by index in place (``register_module``, as ``FullAC`` does), so a wrapped layer
  runs inside the model's own forward; ``attn`` is a layer's ``attention`` (``GQAttention``),
  ``mlp`` its ``feed_forward`` (``FeedForward``);
- attention: torchtitan's names. Only ``sdpa`` is declared (``ATTENTIONS``; the others, with
  the reason each does not run, in ``UNDECLARED_ATTENTIONS``): see ``build_config``;
- policies: ours wrap those submodules, or, for ``whole_layers``, the layers; ``native`` applies
  torchtitan's ``FullAC`` (``torchtitan/distributed/activation_checkpoint.py``) as it is, which
  differs from ``whole_layers`` in one setting (``NATIVE_DIFFERENCE``).
  ``checkpoint_sequential`` cannot run here (``Family.unsupported_kinds`` says why).
"""

from __future__ import annotations

from typing import Any

import torch

try:
    import torchtitan
except ImportError as exc:  # --model-spec ac_bench.models.titan:ALL says how to install it
    raise ModuleNotFoundError(f"{exc}: the torchtitan family needs torchtitan 0.3.0 and triton: pip install -e '.[titan]'") from None
import torchtitan.models.llama3 as titan_llama3
from torch import nn
from torchtitan.components.loss import IGNORE_INDEX, CrossEntropyLoss
from torchtitan.distributed.activation_checkpoint import FullAC
from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm, ScaledDotProductAttention
from torchtitan.models.llama3 import Llama3Model

from ac_bench.models.families import Family, register_family
from ac_bench.models.transformer import Flavor

#: The vocabulary: ``ac_bench.models.hf``'s, so that the output head and the loss stay
#: comparable to a layer's activations at hidden size 64.
VOCAB_SIZE = 256

#: The SwiGLU width of the flavor here: ``hf-llama-tiny``'s ``intermediate_size``, so that
#: torchtitan's llama3 and transformers' Llama compare at identical shapes. torchtitan's own
#: rule (``compute_ffn_hidden_dim(64, multiple_of=256)``, as ``_debugmodel`` applies it) would
#: give 256; ``_build_llama3_layers`` takes the width as given either way.
FFN_HIDDEN = 128

#: The attention implementations declared, by torchtitan's name: ``ScaledDotProductAttention``,
#: the one of torchtitan's inner attentions that trains on the CPU (``build_config`` says why it
#: is the language model's attention here).
ATTENTIONS: tuple[str, ...] = ("sdpa",)

#: torchtitan's other attention implementations for language models
#: (``models/common/config_utils.py``, ``get_attention_config``), and ``eager``, the suite's
#: other name, each with why it is not declared (measured on the CPU with torch 2.13.0).
UNDECLARED_ATTENTIONS: dict[str, str] = {
    "flex": "FlexAttention (torch.compile'd flex_attention) raises NotImplementedError on the CPU as soon as its "
            "inputs require grad: 'FlexAttention does not support backward on CPU'; it needs CUDA to train",
    "flex_flash": "get_attention_config('flex_flash') refuses to build without a CUDA device of compute "
                  "capability 9.0 or more (Hopper, Blackwell)",
    "varlen": "VarlenAttention calls aten::_flash_attention_forward, which has no CPU kernel (NotImplementedError); "
              "it needs CUDA",
    "eager": "torchtitan has no attention that materialises the heads x seq x seq probabilities",
}

#: Why ``sequential`` (``checkpoint_sequential``) is not generated for this family.
NO_SEQUENTIAL = ("checkpoint_sequential replaces the model's forward and passes one tensor from layer to layer; a "
                 "torchtitan layer also takes the attention masks and the positions that the trainer passes to the "
                 "model, and that forward (embedding, final norm, output head) and the loss would be lost")

#: How ``native`` (torchtitan's ``FullAC``) differs from ``whole_layers``: the same layers
#: wrapped by the same ``checkpoint_wrapper``, non-reentrant, RNG state kept, but ``FullAC``
#: passes ``early_stop=False``.
NATIVE_DIFFERENCE = ("torchtitan's FullAC passes early_stop=False to checkpoint_wrapper, so backward recomputes each "
                     "layer's whole forward; whole_layers keeps torch's default early_stop=True, which stops once "
                     "every tensor the layer saved is back. native recomputes, per layer, the ops after the layer's "
                     "last save as well (the feed-forward's w2 matmul and the residual add), and holds their "
                     "outputs until that layer's backward")


class TitanLayers:
    """torchtitan's layers (``Decoder.layers``, a ``ModuleDict`` keyed ``"0"``, ``"1"``, …) as the
    sequence the suite's policies read: ``len``, iteration in the model's order, ``[i]`` and
    ``[i] = module``, which replaces the layer in place with ``register_module``, as torchtitan's
    ``ActivationCheckpointing.apply`` does; the state-dict keys never change."""

    def __init__(self, layers: nn.ModuleDict) -> None:
        self.layers = layers

    def _key(self, index: int) -> str:
        keys = list(self.layers.keys())
        if not -len(keys) <= index < len(keys):
            raise IndexError(f"layer {index} of {len(keys)}")
        return keys[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers.values())

    def __getitem__(self, index: int) -> nn.Module:
        return self.layers[self._key(index)]

    def __setitem__(self, index: int, module: nn.Module) -> None:
        self.layers.register_module(self._key(index), module)


class TitanStep(nn.Module):
    """torchtitan's llama3 as the suite steps it: ``(batch, seq_len + 1)`` token ids in, torchtitan's
    loss (a 0-dim tensor, cross-entropy in nats per label) out.

    ``model`` is torchtitan's ``Llama3Model``, unchanged (state-dict keys ``model.…``).
    ``blocks`` is its layers (``TitanLayers``), which the policies wrap in place.
    ``sublayer_attributes`` names each layer's attention and MLP for the suite's ``attn`` and
    ``mlp``. ``gradient_checkpointing_enable`` is torchtitan's switch (``native``)."""

    sublayer_attributes = {"attn": "attention", "mlp": "feed_forward"}

    def __init__(self, model: Llama3Model) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = CrossEntropyLoss(CrossEntropyLoss.Config())

    @property
    def blocks(self) -> TitanLayers:
        return TitanLayers(self.model.layers)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """torchtitan's full activation checkpointing, ``FullAC.Config().build().apply(model)``, as
        ``parallelize_llama`` applies the trainer's ``activation_checkpoint`` config when it is
        ``full`` (``FullAC.Config()``, its defaults): every layer wrapped with
        ``checkpoint_wrapper`` (non-reentrant, RNG state kept, ``early_stop=False``). The suite's
        ``native`` asks for non-reentrant checkpointing, which is what ``FullAC`` does; anything
        else is refused, since ``FullAC`` has no such setting."""
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False) or kwargs:
            raise ValueError(f"torchtitan's FullAC checkpoints non-reentrantly and takes no further settings; "
                             f"got {gradient_checkpointing_kwargs}")
        FullAC.Config().build().apply(self.model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """One sample batch as torchtitan's dataloader and trainer make and use it: inputs and
        labels shifted by one, per-document positions (one document per sequence), the
        model's predictions, torchtitan's cross-entropy divided by the number of valid labels."""
        inputs, labels = ids[:, :-1], ids[:, 1:]
        positions = torch.arange(inputs.shape[1], device=ids.device).expand(inputs.shape[0], -1)
        pred = self.model(inputs, positions=positions)
        global_valid_tokens = (labels != IGNORE_INDEX).sum()
        loss, _ = self.loss_fn(pred, labels, global_valid_tokens)
        return loss


def build_config(flavor: Flavor, attention: str) -> Llama3Model.Config:
    """``Llama3Model.Config`` at the flavor's sizes, composed as torchtitan's ``_debugmodel``
    composes it, with ``ScaledDotProductAttention`` as every layer's inner attention.

    torchtitan 0.3.0's ``get_attention_config`` builds only ``flex``, ``flex_flash`` and
    ``varlen`` for language models and refuses ``sdpa``, because its dataloaders emit
    per-document positions (several documents packed in one sequence) and
    ``ScaledDotProductAttention`` takes only ``is_causal``, no document mask. None of those three
    trains on the CPU (``UNDECLARED_ATTENTIONS``). The config is built for ``flex`` and each
    layer's ``inner_attention`` replaced by ``ScaledDotProductAttention.Config()``, exactly as
    torchtitan's own tests build an SDPA language model
    (``experiments/graph_trainer/common_utils.py``, ``build_decoder_config_for_backend``).

    Here that is the same attention: each sequence is one document (positions ``0 … seq_len-1``,
    ``TitanStep.forward``), so ``flex``'s mask, causal AND same-document
    (``Decoder._create_flex_attention_mask_for_document``), is the causal mask, which is
    ``is_causal=True``; the scale (``1/sqrt(head_dim)``, ``GQAttention.scaling`` None), the
    grouped K/V heads (``enable_gqa``), RoPE at the given positions and everything outside the
    inner attention are unchanged. What differs is the kernel (SDPA's CPU kernels instead of
    flex's compiled one), so figures are of SDPA's kernels; and no mask is built, as the trainer
    builds none for an attention other than flex and varlen."""
    if attention not in ATTENTIONS:
        reason = UNDECLARED_ATTENTIONS.get(attention, "not an attention implementation of torchtitan's")
        raise ValueError(f"family 'tt-llama3' declares attention {', '.join(ATTENTIONS)}; {attention!r}: {reason}")
    dim, n_heads = flavor.d_model, flavor.n_heads
    config = Llama3Model.Config(
        dim=dim,
        vocab_size=VOCAB_SIZE,
        tok_embeddings=Embedding.Config(num_embeddings=VOCAB_SIZE, embedding_dim=dim,
                                        param_init=titan_llama3._EMBEDDING_INIT),
        norm=RMSNorm.Config(normalized_shape=dim, param_init=titan_llama3._NORM_INIT),
        lm_head=Linear.Config(in_features=dim, out_features=VOCAB_SIZE,
                              param_init=titan_llama3._output_linear_init(dim)),
        layers=titan_llama3._build_llama3_layers(
            fuse_qkv=True, n_layers=flavor.depth, dim=dim, n_heads=n_heads, n_kv_heads=flavor.n_kv_heads,
            hidden_dim=FFN_HIDDEN,
            rope=ComplexRoPE.Config(dim=dim // n_heads, max_seq_len=flavor.seq_len, theta=flavor.rope_theta,
                                    scaling="llama"),
            attn_backend="flex"))
    for layer in config.layers:
        layer.attention.inner_attention = ScaledDotProductAttention.Config()
    return config


def build_llama3(flavor: Flavor, attention: str, dropout: float = 0.0) -> TitanStep:
    """torchtitan's ``Llama3Model`` for ``flavor`` (``build_config``), its weights drawn by
    ``init_states()`` in the default dtype on the default device (``build_model`` sets both), in
    training mode. torchtitan's llama3 has no dropout (``dropout`` must be 0)."""
    if dropout:
        raise ValueError(f"torchtitan's llama3 has no dropout; got dropout={dropout}")
    model = build_config(flavor, attention).build()
    model.init_states()
    return TitanStep(model.train())


def token_ids(flavor: Flavor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The step's input: ``(batch, seq_len + 1)`` int64 token ids, uniform below ``VOCAB_SIZE``
    (inputs and labels of ``seq_len`` tokens each, ``TitanStep.forward``)."""
    return torch.randint(VOCAB_SIZE, (flavor.batch, flavor.seq_len + 1), device=device)


def titan_shape(flavor: Flavor) -> dict[str, Any]:
    """The record's ``family_shape``: what the config adds to the common shape fields."""
    return {"vocab_size": VOCAB_SIZE, "ffn_hidden": FFN_HIDDEN, "n_kv_heads": flavor.n_kv_heads or flavor.n_heads,
            "rope_theta": flavor.rope_theta, "torchtitan_version": torchtitan.__version__}


#: The flavor: hidden 64, 4 heads (2 K/V heads), 2 layers, batch 2, seq 64, fp32, as
#: ``ac_bench.models.hf``'s tiny flavors.
TINY = Flavor("tt-llama3-tiny", d_model=64, n_heads=4, depth=2, batch=2, seq_len=64, n_kv_heads=2,
              family="tt-llama3")

LLAMA3 = register_family(Family(
    "tt-llama3", build_llama3, flavors=(TINY,), attentions=ATTENTIONS, dropout=False,
    make_input=token_ids, shape=titan_shape,
    extra_policies=("whole_layers", "native"), unsupported_kinds=(("sequential", NO_SEQUENTIAL),),
    native_no_early_stop=NATIVE_DIFFERENCE,
    description="torchtitan's llama3 (Llama3Model, its own code), token ids in, its own cross-entropy loss out"))

#: Every torchtitan family here: ``--model-spec ac_bench.models.titan:ALL``.
ALL: tuple[Family, ...] = (LLAMA3,)
