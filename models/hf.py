"""Hugging Face transformers causal LMs as families: the library's own model classes, built from
its config classes at small sizes with random weights (no download), stepped as they train.

``pytest bench/ --model-spec ac_bench.models.hf:ALL`` runs them all (``:LLAMA``, ``:QWEN2``,
``:QWEN3``, ``:MISTRAL``, ``:GPT2`` one each). Importing this module needs transformers (the
``hf`` extra); the families register on import.

What the adapter takes from the library, and what it adds:

- the model: ``AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, ...),
  attn_implementation=attention)``; attention implementations are the library's names
  (``eager``, ``sdpa``); its forward is called as it is;
- the step: token ids in (``randint(vocab_size, (batch, seq_len))``), the model's own loss out:
  ``lm(input_ids=ids, labels=ids, use_cache=False).loss``, transformers' ``ForCausalLMLoss``
  (labels shifted by one, cross-entropy over the vocabulary, mean over the tokens), so the
  embedding, every decoder layer, the final norm, the output head and the loss are measured;
- the decoder layers: the one ``nn.ModuleList`` of ``GradientCheckpointingLayer`` instances, the
  modules transformers' own ``gradient_checkpointing_enable`` switches; a layer's attention: its
  child of the class the model records attentions from (``_can_record_outputs["attentions"]``);
  its MLP: its child ``mlp`` (the library's name in every family here);
- policies: ours wrap those submodules (``attn`` -> ``self_attn`` in Llama, ``attn`` in GPT-2)
  or, for ``whole_layers``, the layers; ``native`` calls the model's own switch.
  ``checkpoint_sequential`` cannot run here (``Family.unsupported_kinds`` says why).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_layers import GradientCheckpointingLayer

from ac_bench.models.families import Family, register_family
from ac_bench.models.transformer import Flavor

#: The vocabulary of every flavor here: small, so the output head and the loss (batch x seq x
#: vocab logits) stay comparable to a layer's activations at hidden size 64.
VOCAB_SIZE = 256

#: Why ``sequential`` (``checkpoint_sequential``) is not generated for these families.
NO_SEQUENTIAL = ("checkpoint_sequential replaces the model's forward and passes one tensor from layer to layer; a "
                 "transformers decoder layer also takes the position embeddings and the attention mask that the "
                 "model's own forward computes, and that forward (embedding, final norm, output head, loss) would "
                 "be lost")


#: Why ``saved_bytes`` can be below ``forward_kept_bytes`` here (``Family.saved_bytes_gap``).
KEYWORD_INPUTS = ("transformers passes a layer's position embeddings and ids, and a sublayer's inputs, as keyword "
                  "arguments; a non-reentrant checkpoint keeps keyword-argument tensors as a Python object "
                  "(torch.utils.checkpoint saves only positional tensors for backward), so saved_tensors_hooks do "
                  "not see them where no op outside the region saves them too")


def decoder_layers(lm: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and the module of ``lm``'s decoder layers: the one ``nn.ModuleList`` whose
    children are all ``GradientCheckpointingLayer``s (transformers 5: ``modeling_layers.py``);
    a ValueError when there is not exactly one such list."""
    found = [(name, m) for name, m in lm.named_modules() if isinstance(m, nn.ModuleList) and len(m)
             and all(isinstance(layer, GradientCheckpointingLayer) for layer in m)]
    if len(found) != 1:
        raise ValueError(f"{type(lm).__name__}: expected one ModuleList of GradientCheckpointingLayer "
                         f"(its decoder layers), found {len(found)}: {[n for n, _ in found]}")
    return found[0]


def sublayer_attributes(lm: nn.Module, layer: nn.Module) -> dict[str, str]:
    """``{"attn": ..., "mlp": ...}``: the attributes of ``layer`` holding its attention (its child
    of the class ``lm`` records attentions from, ``_can_record_outputs["attentions"]``, a class or
    an ``OutputRecorder``) and its MLP (its child ``mlp``); a ValueError naming what is missing."""
    recorded = getattr(lm, "_can_record_outputs", None) or {}
    target = recorded.get("attentions")
    target = getattr(target, "target_class", target)
    attn = [name for name, child in layer.named_children() if isinstance(target, type) and isinstance(child, target)]
    if len(attn) != 1 or not isinstance(getattr(layer, "mlp", None), nn.Module):
        raise ValueError(f"{type(layer).__name__}: expected one attention child of the class "
                         f"{getattr(target, '__name__', target)} and an 'mlp' child, found attention {attn} and "
                         f"children {[n for n, _ in layer.named_children()]}")
    return {"attn": attn[0], "mlp": "mlp"}


class CausalLMStep(nn.Module):
    """A transformers causal LM as the suite steps it: token ids ``(batch, seq_len)`` in, the
    model's own loss (a 0-dim tensor, cross-entropy in nats per token) out.

    ``lm`` is the library's model, unchanged (state-dict keys ``lm.…``). ``blocks`` is its
    decoder-layer list (``decoder_layers``), which the policies wrap in place; the model reads
    its layers from there, so a wrapped layer runs inside the model's own forward.
    ``sublayer_attributes`` names each layer's attention and MLP for the suite's ``attn`` and
    ``mlp``. ``gradient_checkpointing_enable`` is the library's switch (``native``)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self._layers_name, layers = decoder_layers(lm)
        self.sublayer_attributes = sublayer_attributes(lm, layers[0])

    @property
    def blocks(self) -> nn.ModuleList:
        return self.lm.get_submodule(self._layers_name)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """transformers' own switch, on the model: ``activation_checkpointing_enable`` where this
        transformers has it (5.24, which deprecates the old name with a FutureWarning per call),
        else ``gradient_checkpointing_enable`` (5.18); ``kwargs`` (``every_n_layers``) as they are."""
        from ac_bench.models.ac.native import native_switch
        switch, keyword = native_switch(self.lm)
        switch(**{keyword: gradient_checkpointing_kwargs}, **kwargs)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The model's forward with ``labels=input_ids`` (a training step, no KV cache); its loss.
        On fake tensors (``unpacked_on_fake_tensors``) the model is told what it reads from the
        data on real ones: the sequences are not packed."""
        with unpacked_on_fake_tensors(input_ids):
            return self.lm(input_ids=input_ids, labels=input_ids, use_cache=False).loss


@contextlib.contextmanager
def unpacked_on_fake_tensors(input_ids: torch.Tensor):
    """Where ``input_ids`` is a fake tensor (an estimate: shapes, no data), let transformers'
    ``masking_utils.find_packed_sequence_indices`` answer None, "one sequence per row", as it does
    on real tensors for the suite's inputs (position ids ``arange(seq_len)``, no attention mask).
    transformers cannot read fake data, so it assumes packed sequences and builds an explicit
    ``(batch, 1, seq, seq)`` mask where the real step passes ``is_causal=True`` to SDPA: at
    ``hf-llama-tiny`` with sdpa the estimate kept 131,072 B more than the real step. Elsewhere a
    no-op."""
    from torch._subclasses.fake_tensor import FakeTensor
    if not isinstance(input_ids, FakeTensor):
        yield
        return
    from transformers import masking_utils
    original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if original is None:  # a transformers without the check has nothing to be told
        yield
        return
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def hf_config(model_type: str, flavor: Flavor, dropout: float = 0.0, **extra: Any):
    """The library's config class for ``model_type`` (``AutoConfig.for_model``) at the flavor's
    sizes: hidden ``d_model``, ``depth`` layers, ``n_heads`` heads of ``d_model // n_heads``
    (``n_kv_heads`` key/value heads where the config has them), ``VOCAB_SIZE`` tokens, ``seq_len``
    positions (GPT-2's learned position table), every dropout probability of the config
    (``*dropout*``, ``*_pdrop``: GPT-2 defaults to 0.1) set to ``dropout``; ``extra`` on top
    (``intermediate_size``); the rest the library's defaults."""
    config = AutoConfig.for_model(model_type)
    # Special tokens inside the small vocabulary (GPT-2's default 50256 is not, and the library warns).
    sizes = dict(hidden_size=flavor.d_model, num_hidden_layers=flavor.depth, num_attention_heads=flavor.n_heads,
                 vocab_size=VOCAB_SIZE, max_position_embeddings=flavor.seq_len,
                 bos_token_id=0, eos_token_id=0, pad_token_id=None)
    if hasattr(config, "num_key_value_heads"):
        sizes["num_key_value_heads"] = flavor.n_kv_heads or flavor.n_heads
    if hasattr(config, "head_dim"):
        sizes["head_dim"] = flavor.d_model // flavor.n_heads
    dropouts = {k: dropout for k, v in config.to_dict().items()
                if isinstance(v, float) and ("dropout" in k or k.endswith("_pdrop"))}
    return AutoConfig.for_model(model_type, **{**sizes, **dropouts, **extra})


def build_causal_lm(model_type: str, extra: tuple[tuple[str, Any], ...], flavor: Flavor, attention: str,
                    dropout: float = 0.0) -> CausalLMStep:
    """The library's causal LM for ``model_type`` (``AutoModelForCausalLM.from_config``) with
    ``attn_implementation=attention``, random weights drawn by its own initialisation in the
    default dtype (``build_model`` sets it and the device), in training mode."""
    config = hf_config(model_type, flavor, dropout, **dict(extra))
    lm = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=torch.get_default_dtype())
    return CausalLMStep(lm.train())


def token_ids(flavor: Flavor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The step's input: ``(batch, seq_len)`` int64 token ids, uniform below ``VOCAB_SIZE``."""
    return torch.randint(VOCAB_SIZE, (flavor.batch, flavor.seq_len), device=device)


def attention_implementations(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """Every attention implementation the installed transformers registers (``eager`` and the
    keys of ``ALL_ATTENTION_FUNCTIONS``: ``sdpa``, ``flex_attention``, ``flash_attention_2``,
    ``paged|…``) -> None where one training step of ``hf-llama-tiny`` runs with it on ``device``
    (forward and backward), else the first line of the error that stopped it. On the CPU with
    transformers 5.18 and torch 2.13 only ``eager`` and ``sdpa`` train: FlexAttention has no
    backward on the CPU, the flash kernels (``paged|flash_attention_*`` too) are packages of their
    own or hub kernels, and ``paged|sdpa`` and ``paged|eager`` need continuous batching's cache."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    flavor = LLAMA.flavors[0]
    device = torch.device(device)
    out: dict[str, str | None] = {}
    for name in dict.fromkeys(("eager", *ALL_ATTENTION_FUNCTIONS.valid_keys())):
        try:
            with torch.device(device):
                model = build_causal_lm("llama", (("intermediate_size", 128),), flavor, name)
            model(token_ids(flavor, device, torch.float32)).backward()
            out[name] = None
        except Exception as exc:  # noqa: BLE001 - the reason is the answer
            out[name] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    return out


def hf_shape(model_type: str, extra: tuple[tuple[str, Any], ...], flavor: Flavor) -> dict:
    """The record's ``family_shape``: what the config adds to the common shape fields."""
    config = hf_config(model_type, flavor, **dict(extra))
    return {"model_type": model_type, "vocab_size": config.vocab_size,
            "intermediate_size": getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
            or 4 * flavor.d_model,
            "n_kv_heads": getattr(config, "num_key_value_heads", flavor.n_heads),
            "transformers_version": transformers.__version__}


def hf_family(model_type: str, n_kv_heads: int | None = 2, **extra: Any) -> Family:
    """A transformers family ``hf-{model_type}`` with one flavor, ``hf-{model_type}-tiny``:
    hidden 64, 4 heads (``n_kv_heads`` key/value heads), 2 layers, batch 2, seq 64, fp32.
    ``extra``: config fields of this model type (``intermediate_size``)."""
    name = f"hf-{model_type}"
    frozen = tuple(sorted(extra.items()))
    flavor = Flavor(f"{name}-tiny", d_model=64, n_heads=4, depth=2, batch=2, seq_len=64, n_kv_heads=n_kv_heads,
                    family=name)
    return register_family(Family(
        name, functools.partial(build_causal_lm, model_type, frozen), flavors=(flavor,),
        make_input=token_ids, shape=functools.partial(hf_shape, model_type, frozen),
        extra_policies=("whole_layers", "native"), unsupported_kinds=(("sequential", NO_SEQUENTIAL),),
        saved_bytes_gap=KEYWORD_INPUTS,
        description=f"transformers' {AutoConfig.for_model(model_type).__class__.__name__} model for causal LM, "
                    f"token ids in, its own loss out"))


LLAMA = hf_family("llama", intermediate_size=128)
QWEN2 = hf_family("qwen2", intermediate_size=128)
MISTRAL = hf_family("mistral", intermediate_size=128)
GPT2 = hf_family("gpt2", n_kv_heads=None)
#: Qwen3 where the installed transformers has it (4.51 and later).
QWEN3 = hf_family("qwen3", intermediate_size=128) if "qwen3" in transformers.CONFIG_MAPPING else None

#: Every transformers family here: ``--model-spec ac_bench.models.hf:ALL``.
ALL: tuple[Family, ...] = tuple(f for f in (LLAMA, QWEN2, QWEN3, MISTRAL, GPT2) if f is not None)


#: Llama 3's vocabulary (the published ``params.json`` of 8B, 70B and 405B: ``vocab_size`` 128256).
LLAMA3_VOCAB_SIZE = 128256


def llama3_extra(flavor: Flavor) -> tuple[tuple[str, Any], ...]:
    """The LlamaConfig fields a Llama-3 flavor sets beyond ``hf_config``'s: the SwiGLU width by
    torchtitan's llama3 rule (``ac_bench.models.llama.ffn_hidden_dim``: 14336 at 8B, 28672 at
    70B, 53248 at 405B, the published ``intermediate_size``), the 128256-token vocabulary,
    RoPE's base and RMSNorm's epsilon from the flavor."""
    from ac_bench.models.llama import ffn_hidden_dim
    return (("intermediate_size", ffn_hidden_dim(flavor)), ("vocab_size", LLAMA3_VOCAB_SIZE),
            ("rope_theta", flavor.rope_theta), ("rms_norm_eps", flavor.norm_eps))


def build_llama3(flavor: Flavor, attention: str, dropout: float = 0.0) -> CausalLMStep:
    """transformers' ``LlamaForCausalLM`` at a Llama-3 flavor's sizes (``llama3_extra``)."""
    return build_causal_lm("llama", llama3_extra(flavor), flavor, attention, dropout)


def published_family(name: str, model_type: str, build, extra, description: str) -> Family:
    """A family of a model type at its published shapes (``build`` at ``extra(flavor)``'s config
    fields), registered with no flavor (``ac_bench.scale.SCALE_MODELS`` holds them), stepped as
    the transformers families here are."""
    return register_family(Family(
        name, build, flavors=(), make_input=token_ids,
        shape=lambda flavor: hf_shape(model_type, extra(flavor), flavor),
        extra_policies=("whole_layers", "native"), unsupported_kinds=(("sequential", NO_SEQUENTIAL),),
        saved_bytes_gap=KEYWORD_INPUTS, description=description))


#: transformers' Llama at Llama 3's published shapes (``ac_bench.scale.SCALE_MODELS`` holds its
#: flavors, which are estimated on fake tensors only): not in ``ALL``, registered with no flavor.
LLAMA3 = published_family(
    "hf-llama3", "llama", build_llama3, llama3_extra,
    "transformers' LlamaForCausalLM at Llama 3's published shapes (vocabulary 128256), token ids in, its own loss out")


#: Qwen3's vocabulary (the published ``config.json`` of every dense Qwen3; torchtitan's
#: ``qwen3_configs``, ``vocab_size = 151936``).
QWEN3_VOCAB_SIZE = 151936


def qwen3_extra(flavor: Flavor) -> tuple[tuple[str, Any], ...]:
    """The Qwen3Config fields a published Qwen3 flavor sets beyond ``hf_config``'s: the MLP
    width as published (``flavor.ffn_hidden``: 12288 at 8B, 17408 at 14B), the 151936-token
    vocabulary, an output head of its own (``tie_word_embeddings`` false from 8B up), RoPE's
    base and RMSNorm's epsilon from the flavor (1e6 and 1e-6). Qwen3's per-head RMSNorm of
    queries and keys is the library's own (``Qwen3Attention.q_norm``, ``k_norm``)."""
    if flavor.ffn_hidden is None:
        raise ValueError(f"flavor {flavor.name!r}: a published Qwen3 shape needs ffn_hidden (its intermediate_size)")
    return (("intermediate_size", flavor.ffn_hidden), ("vocab_size", QWEN3_VOCAB_SIZE),
            ("tie_word_embeddings", False), ("rope_theta", flavor.rope_theta), ("rms_norm_eps", flavor.norm_eps))


def build_qwen3(flavor: Flavor, attention: str, dropout: float = 0.0) -> CausalLMStep:
    """transformers' ``Qwen3ForCausalLM`` at a published Qwen3 flavor's sizes (``qwen3_extra``)."""
    return build_causal_lm("qwen3", qwen3_extra(flavor), flavor, attention, dropout)


#: transformers' Qwen3 at Qwen3's published dense shapes (``ac_bench.scale.SCALE_MODELS``), like
#: ``LLAMA3``: estimated on fake tensors only, registered with no flavor; absent where the
#: installed transformers has no Qwen3.
QWEN3_PUBLISHED = published_family(
    "hf-qwen3-published", "qwen3", build_qwen3, qwen3_extra,
    "transformers' Qwen3ForCausalLM at Qwen3's published dense shapes (vocabulary 151936), token ids in, its own "
    "loss out") if QWEN3 is not None else None
