"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``, and the ops of backward and
the bytes its non-matmul ops read and write (``BackwardOpCounter``).

FlopCounterMode has no formula for the CPU flash-attention kernel that ``sdpa`` runs on the
CPU, so without the registration below an ``sdpa`` variant's attention FLOPs would silently
count as zero. The formulas are PyTorch's own for the other SDPA kernels.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

aten = torch.ops.aten

_CPU_FLASH_FWD = aten._scaled_dot_product_flash_attention_for_cpu
_CPU_FLASH_BWD = aten._scaled_dot_product_flash_attention_for_cpu_backward


def _cpu_flash_forward_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """(query, key, value, ...) -> output, logsumexp: QK^T and PV."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                             out_shape=None, **kwargs) -> int:
    """(grad_out, query, key, value, out, logsumexp, ...): recompute scores plus four bmms."""
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register_missing_formulas() -> None:
    """Register the CPU flash SDPA formulas unless this PyTorch already counts them."""
    if _CPU_FLASH_FWD not in flop_counter.flop_registry:
        register_flop_formula(_CPU_FLASH_FWD)(_cpu_flash_forward_flop)
    if _CPU_FLASH_BWD not in flop_counter.flop_registry:
        register_flop_formula(_CPU_FLASH_BWD)(_cpu_flash_backward_flop)


def gqa_sdpa_flop_count(query_shape, key_shape, value_shape) -> int:
    """FLOPs of SDPA's forward (QK^T and PV, 2 FLOPs per multiply-add) for query
    (b, h_q, s_q, d), key (b, h_kv, s_k, d) and value (b, h_kv, s_k, d_v), where h_q is a
    multiple of h_kv (grouped-query attention: each key/value head serves h_q / h_kv query
    heads). PyTorch's own formula from 2.12 on (``torch.utils.flop_counter.sdpa_flop_count``);
    torch 2.11 and older assert equal head counts. Raises ValueError for shapes that are not
    SDPA's."""
    b, h_q, s_q, d_q = query_shape
    b_k, h_kv, s_k, d_k = key_shape
    b_v, h_v, s_v, d_v = value_shape
    if not (b == b_k == b_v and h_kv == h_v and d_q == d_k and s_k == s_v) or h_kv <= 0 or h_q % h_kv:
        raise ValueError(f"sdpa: query/key/value shapes are incompatible: q={query_shape}, k={key_shape}, v={value_shape}")
    return flop_counter.bmm_flop((b * h_q, s_q, d_q), (b * h_q, d_q, s_k)) + \
        flop_counter.bmm_flop((b * h_q, s_q, s_k), (b * h_q, s_k, d_v))


def gqa_sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape) -> int:
    """FLOPs of SDPA's backward (the scores recomputed, then four matmuls: dV, dP, dQ, dK), with
    grouped-query shapes as ``gqa_sdpa_flop_count``; PyTorch's own formula from 2.12 on
    (``torch.utils.flop_counter.sdpa_backward_flop_count``). Raises ValueError as that does."""
    b, h_q, s_q, d_q = query_shape
    _, h_kv, s_k, _ = key_shape
    d_v = value_shape[-1]
    if tuple(grad_out_shape) != (b, h_q, s_q, d_v):
        raise ValueError(f"sdpa backward: grad_out {grad_out_shape} does not match q={query_shape}, v={value_shape}")
    scores = gqa_sdpa_flop_count(query_shape, key_shape, value_shape) - \
        flop_counter.bmm_flop((b * h_q, s_q, s_k), (b * h_q, s_k, d_v))
    return (scores
            + flop_counter.bmm_flop((b * h_q, s_q, d_v), (b * h_q, d_v, s_k))
            + flop_counter.bmm_flop((b * h_q, s_k, s_q), (b * h_q, s_q, d_v))
            + flop_counter.bmm_flop((b * h_q, s_q, s_k), (b * h_q, s_k, d_q))
            + flop_counter.bmm_flop((b * h_q, d_q, s_q), (b * h_q, s_q, s_k)))


#: Shapes of grouped-query attention (4 query heads over 2 key/value heads), to ask torch's formula.
_GQA_PROBE = ((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16))


def supply_gqa_formulas() -> bool:
    """Where this torch's SDPA FLOP formulas refuse grouped-query shapes (2.11 and older:
    ``AssertionError: sdpa_flop_count: query/key/value shapes are incompatible`` for every
    Llama flavor with fewer KV heads), put ``gqa_sdpa_flop_count`` and
    ``gqa_sdpa_backward_flop_count`` in their place in ``torch.utils.flop_counter``, whose
    registered SDPA formulas look them up when called. Returns whether it did."""
    try:
        flop_counter.sdpa_flop_count(*_GQA_PROBE)
        flop_counter.sdpa_backward_flop_count((1, 4, 8, 16), *_GQA_PROBE)
        return False
    except AssertionError:
        flop_counter.sdpa_flop_count = gqa_sdpa_flop_count
        flop_counter.sdpa_backward_flop_count = gqa_sdpa_backward_flop_count
        return True


register_missing_formulas()
supply_gqa_formulas()


#: Higher-order operators that only run one op while saving or restoring the RNG state: what a
#: compiled checkpointed region calls (Inductor's RNG functionalization). Their op is a random
#: draw, which has no FLOP formula, so passing them through counts exactly what is counted now.
RNG_HIGHER_ORDER_OPS = ("run_and_save_rng_state", "run_with_rng_state", "graphsafe_run_with_rng_state")


class _CompileAwareInnerMode(flop_counter._FlopCounterMode):
    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    def _handle_higher_order_ops(self, func, types, args, kwargs):
        """torch's FlopCounterMode (2.13) declares it takes every higher-order operator and
        returns NotImplemented for those it has no rule for, which the compiled code receives
        as the op's result: a compiled block with a checkpoint then fails in its forward with
        ``TypeError: 'NotImplementedType' object is not subscriptable`` (pytorch #120381's
        shape, seen here with ``torch.compile`` on each block of a checkpointed model). The RNG
        ones are run as they are."""
        if getattr(func, "__name__", None) in RNG_HIGHER_ORDER_OPS:
            return func(*args, **kwargs)
        return super()._handle_higher_order_ops(func, types, args, kwargs)


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: every FLOP is counted under "Global"
    only. The ModuleTracker's global module hooks are on Dynamo's skip list, so with them
    installed a compiled model recompiles with graph breaks around every module."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


class CompileAwareFlopCounterMode(FlopCounterMode):
    """FlopCounterMode under which a compiled model runs compiled (see
    ``ac_bench.probes.memory.compile_aware_mem_tracker_class``): its dispatch mode declares that it ignores
    compile internals, so Dynamo does not fall back to eager while it counts. Counts are
    global only (no per-module breakdown, which the suite does not use)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mod_tracker = _GlobalOnly()

    @classmethod
    def ignore_compile_internals(cls) -> bool:  # where FlopCounterMode is itself the mode
        return True

    def __enter__(self):
        out = super().__enter__()
        if isinstance(getattr(self, "mode", None), flop_counter._FlopCounterMode):
            self.mode.__class__ = _CompileAwareInnerMode  # already pushed: the class is read per call
        return out


def flop_counter_mode() -> FlopCounterMode:
    """A silent FlopCounterMode with the suite's formulas registered."""
    return CompileAwareFlopCounterMode(display=False)


def flops_by_op(counter: FlopCounterMode) -> dict[str, int]:
    """Global FLOPs per aten op name, sorted by name."""
    return {str(op): int(n) for op, n in sorted(counter.get_flop_counts()["Global"].items(), key=lambda kv: str(kv[0]))}


def is_view_op(func: torch._ops.OpOverload) -> bool:
    """An op that only makes a view of its input (no kernel, no memory read or written): its
    schema says so (``detach``, ``view``, ``t``, ``transpose``, ``select``, ...), or it is
    ``_unsafe_view``, a view whose schema does not declare the alias."""
    return func.is_view or func._overloadpacket is aten._unsafe_view


def is_metadata_query(func: torch._ops.OpOverload) -> bool:
    """An op that returns no tensor, only metadata (``prim.device``, ``aten.sym_size``,
    ``aten.is_contiguous``): FakeTensorMode dispatches these where real tensors answer without
    the dispatcher (``tensor.cpu()`` on a fake tensor asks ``prim.device`` twice), so counting
    them would make a fake-tensor count differ from the real one. An op with no return at all
    (an in-place ``_foreach_`` op) writes tensors and is not one."""
    returns = func._schema.returns
    return bool(returns) and not any("Tensor" in str(r.type) for r in returns)


def has_flop_formula(func: torch._ops.OpOverload) -> bool:
    """A matmul, as the FLOP count sees it: an op whose overload packet has a FLOP formula in
    ``torch.utils.flop_counter.flop_registry`` (``mm``, ``addmm``, ``bmm``, ``baddbmm``, the SDPA
    kernels and their backwards, the CPU flash kernel's registered above, convolutions). The FLOP
    counter sits above the op counter on the mode stack and decomposes what has no formula
    before it counts, so both see the same ops and every op is either counted in FLOPs or here."""
    return func._overloadpacket in flop_counter.flop_registry


def tensor_bytes(tree) -> int:
    """The ``nbytes`` (elements x element size; of the view, not its storage) of every tensor in
    ``tree`` (an op's arguments or its result: tuples, lists, dicts; None and numbers ignored),
    each occurrence counted."""
    return sum(t.nbytes for t in tree_leaves(tree) if isinstance(t, torch.Tensor))


def is_profiler_marker(func: torch._ops.OpOverload) -> bool:
    """A ``profiler`` op: ``record_function``'s enter and exit markers, which open and close a
    scope in a trace and do no work on any tensor. FSDP2 brackets its hooks and collectives with
    them, and how many it dispatches changes between torch versions: at ``tiny`` over 2 ranks,
    torch 2.15.0 dispatches 20 ``profiler._record_function_exit`` in backward where 2.13.0
    dispatched 23, the ops that compute being the same (2026-12-01); counting them would report
    a change of torch's tracing as one of the step's work."""
    return func.namespace == "profiler"


class BackwardOpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched during backward (between ``Training.step``'s ``forward``
    and ``backward`` marks: pass ``mark`` to the step) that compute or copy, recomputation
    included; views (``is_view_op``) are left out (``ops``). Of those without a FLOP formula
    (``has_flop_formula``: not matmuls), it adds up the bytes they read and write (``nonmatmul_bytes``):
    the ``nbytes`` of every tensor argument and of every tensor returned (``tensor_bytes``), so
    an in-place op's tensor (``add_``, ``copy_``'s destination) counts once read and once written.

    FLOPs count matmuls only; a policy that recomputes LayerNorm, softmax, activations and
    copies (``sac-sdpa``, or the compile partitioner at ``activation_memory_budget`` 0.99
    against 1.0) costs no FLOP more, but dispatches more ops in backward, each a kernel that
    reads and writes memory (pytorch #149258); the bytes say how much, as a count of ops cannot
    (a recomputed softmax over heads x seq x seq probabilities against a LayerNorm of one token
    row). Views and the profiler's ``record_function`` markers (``is_profiler_marker``) are left
    out because they cost neither:
    unpacking a saved tensor through ``saved_tensors_hooks`` adds a ``detach`` per tensor (50
    for ``offload-sdpa`` at ``tiny``, where on the CPU nothing moves), which would count as
    work; so are metadata queries (``is_metadata_query``), which only fake tensors dispatch.
    Each other op counts once, in-place ones included, as the dispatcher sees them below
    autograd (composite ops decomposed). The bytes are what the ops' tensors hold, not what a
    cache hierarchy moves: a kernel that reads a tensor twice, or fuses two ops, is not seen. It
    nests with FlopCounterMode, FakeTensorMode (whose tensors have the real ones' sizes) and the
    kernel recorder, and lets a compiled model run
    compiled: with ``aot_eager_decomp_partition`` the compiled backward's aten ops pass through
    here; under inductor (CUDA) only what is not fused into generated kernels would."""

    def __init__(self) -> None:
        super().__init__()
        self.counting = False
        self.ops = 0
        self.nonmatmul_bytes = 0

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    #: Higher-order operators pass through uncounted (as in ``ac_bench.probes.attention``'s
    #: recorder): the ops they run are dispatched, and counted, on their own.
    supports_higher_order_operators = True

    def mark(self, phase: str) -> None:
        """``Training.step``'s marks: count from the end of the forward to the end of backward."""
        if phase == "forward":
            self.counting = True
        elif phase == "backward":
            self.counting = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counted = self.counting and isinstance(func, torch._ops.OpOverload) and not is_view_op(func) \
            and not is_metadata_query(func) and not is_profiler_marker(func)
        # The arguments' sizes before the op (an in-place resize changes them).
        read = tensor_bytes((args, kwargs)) if counted and not has_flop_formula(func) else None
        out = func(*args, **kwargs)
        if counted:
            self.ops += 1
            if read is not None:
                self.nonmatmul_bytes += read + tensor_bytes(out)
        return out
