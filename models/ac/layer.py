"""Whole layers under ``torch.utils.checkpoint``, layer 0 included: what transformers'
``gradient_checkpointing_enable()`` and torchtitan's full AC (``FullAC``) checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

from ac_bench.models.ac.base import Policy, parse_count
from ac_bench.models.ac.offload import HostOffloadWrapper, OffloadAC


@dataclass(frozen=True)
class LayerAC(Policy):
    """Layers (blocks) ``range(0, depth, layer_step)``, each checkpointed whole as one region,
    non-reentrant: a layer keeps only its inputs (the hidden states, and in a transformers model
    the position embeddings and the mask its forward passes) for recomputation.

    The libraries' semantics, not ours: ``whole_layers`` is transformers'
    ``gradient_checkpointing_enable()`` (``GradientCheckpointingLayer.__call__`` runs every
    decoder layer under ``checkpoint``; transformers 5.18, ``modeling_layers.py``) and
    torchtitan's ``FullAC`` (``checkpoint_wrapper`` around each ``TransformerBlock``);
    ``whole_layers_every_N`` is transformers' ``every_n_layers=N`` (layers 0, N, 2N…,
    ``PreTrainedModel._set_gradient_checkpointing``). The suite's ``full`` instead checkpoints the
    attention and MLP sublayers of blocks 1… separately.

    ``early_stop``: non-reentrant checkpointing's early stop (torch's default, and
    transformers'): backward's recomputation of a layer stops once every tensor the layer saved is
    back. torchtitan's ``FullAC`` passes ``early_stop=False``: the layer's whole forward is
    recomputed, the ops after its last save too. No registered name turns it off; the torchtitan
    family's ``native`` is checked against it (``Family.native_no_early_stop``).

    ``offload``: each checkpointed layer also runs under ``HostOffloadWrapper`` (``save_on_cpu``,
    pinned on a GPU), so what its checkpoint keeps (the layer's inputs) waits in host memory and
    the layer is still recomputed: ``whole_layers_offload``, transformers'
    ``gradient_checkpointing_enable(offload=True)`` (5.18 and 5.24: ``save_on_cpu(pin_memory=True)``
    around each layer's ``checkpoint``; ``modeling_utils.py``). ``offloaded_bytes`` is what it
    moves (0 on the CPU, where nothing moves; counted on fake tensors under ``simulated_host``).
    """

    layer_step: int = 1
    early_stop: bool = True
    offload: bool = False

    kind: ClassVar[str] = "layer"
    #: Not modelled: a whole layer's region keeps its input only, which the "regions" composition
    #: (per sublayer) does not describe; the analytic checks skip for it, saying so.
    composition: ClassVar[str | None] = None
    fsdp2_incompatibility: ClassVar[str | None] = None
    name_grammar: ClassVar[str | None] = "whole_layers_every_N (N >= 2)"

    @classmethod
    def from_name(cls, name: str) -> Policy | None:
        """``whole_layers_every_N``: layers 0, N, 2N… each checkpointed whole."""
        n = parse_count(r"whole_layers_every_(\d+)", name, 2, "whole_layers_every_N needs N >= 2")
        return None if n is None else cls(f"whole_layers_every_{n}", layer_step=n)

    def __post_init__(self) -> None:
        if self.layer_step < 1:
            raise ValueError(f"policy {self.name!r}: layer_step must be >= 1, got {self.layer_step}")

    def apply(self, model: nn.Module) -> nn.Module:
        """Wrap the layers in place with ``checkpoint_wrapper``, which keeps state-dict keys and
        forwards attribute reads (a transformers layer's ``attention_type``) to the layer."""
        for i in range(0, len(model.blocks), self.layer_step):
            model.blocks[i] = checkpoint_wrapper(model.blocks[i], checkpoint_impl=CheckpointImpl.NO_REENTRANT,
                                                 preserve_rng_state=self.preserve_rng_state, early_stop=self.early_stop)
            if self.offload:
                model.blocks[i] = HostOffloadWrapper(model.blocks[i])
        return model

    @property
    def hidden_from_saved_tensors_hooks(self) -> str | None:
        """Offloaded layers: ``save_on_cpu``'s hooks are the innermost pair, which alone apply."""
        return OffloadAC.hidden_from_saved_tensors_hooks if self.offload else None
