"""Does a checkpointed model train exactly like the same model without checkpointing?"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX

from ac_bench.models import Flavor, Policy, apply_policy, build_model, family_of, get_policy, loss_fn, resolve_dtype

#: Tolerances for ``X-sdpa`` against ``X-eager`` (same weights, same input): the fused kernel
#: sums QK^T and PV in another order and, on the CPU, in blocks with an online softmax.
#: Each is a few hundred ulps of the dtype at the values' scale (fp32 eps 1.2e-7, bf16 eps
#: 7.8e-3, fp16 eps 9.8e-4), which covers reordered sums over seq_len terms and their
#: propagation through depth blocks and backward, and is far below a real bug (a wrong mask,
#: scale or missing head changes results at order 1). ``atol`` is relative to the scale a
#: value is computed from (``tolerance_scales``: the step's largest gradient, or output), since
#: gradients of ``output.mean()`` are ~1/numel and some are zero in exact arithmetic.
CROSS_ATTENTION_TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"rtol": 1e-4, "atol": 1e-4},
    torch.bfloat16: {"rtol": 5e-2, "atol": 5e-2},
    torch.float16: {"rtol": 1e-2, "atol": 1e-2},
}


#: Tolerances for the gradients of a step sharded over W ranks (FSDP2) against the single
#: process stepping the same global batch, relative to ``tolerance_scales``. The
#: math is the same; the summation order is not: a weight's gradient sums over the batch x seq
#: rows, in one GEMM in the single process and as W per-rank GEMMs whose results the
#: reduce-scatter adds and divides by W (exact for W a power of two). Reassociating a sum of n
#: terms moves it by at most about n * eps * sum|terms| (Higham, the worst case; sqrt(n) * eps
#: is typical), and the difference then propagates through depth blocks of backward. For
#: ``tiny`` (n = 64 rows) that bound is 7.6e-6 at fp32; measured: 3.2e-7 of the largest
#: magnitude (eager), 2.6e-7 (sdpa), with 13 of 36 tensors bitwise equal. 1e-5 covers the bound
#: at tiny and stays three orders of magnitude below any real fault (a missing reduction
#: halves a gradient; a wrong shard or rank changes it at order 1). Low precision: the same
#: argument in ulps of bf16/fp16 (not run on the CPU).
SHARDED_TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.bfloat16: {"rtol": 5e-2, "atol": 5e-2},
    torch.float16: {"rtol": 1e-2, "atol": 1e-2},
}


@dataclass
class StepResult:
    """Loss, output and every parameter's gradient (None where it got none) of one step, and
    the training state after it, None where not read: every buffer (``buffers``: running
    statistics, counters), every parameter after the optimizer step (``parameters``, frozen ones
    included) and every optimizer state tensor (``optimizer_state``, ``"<parameter>.<key>"``:
    AdamW's ``step``, ``exp_avg``, ``exp_avg_sq``). Recomputation that updates a buffer or a
    frozen parameter a second time (a BatchNorm's ``num_batches_tracked``, an EMA copy of the
    weights kept as a parameter) leaves the gradients equal and the model's state not."""

    loss: torch.Tensor
    output: torch.Tensor
    grads: dict[str, torch.Tensor | None]
    buffers: dict[str, torch.Tensor] | None = None
    parameters: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, torch.Tensor] | None = None


def _clean(name: str) -> str:
    """A parameter or buffer name without checkpoint_wrapper's prefix (not in state-dict keys)."""
    return name.replace(_CHECKPOINT_PREFIX, "")


def _optimizer_step(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One step of the suite's optimizer (``ac_bench.record.make_optimizer``: AdamW, foreach)
    on the gradients the model holds; the parameters and the optimizer state after it, by name.
    The model's weights are then put back, so that a step result leaves the model as it was."""
    from ac_bench.record import make_optimizer

    names = {p: _clean(n) for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for p, n in names.items()}
    optimizer = make_optimizer(model)
    optimizer.step()
    parameters = {n: p.detach().clone() for p, n in names.items()}
    state = {f"{names[p]}.{key}": value.detach().clone() for p, st in optimizer.state.items()
             for key, value in st.items() if isinstance(value, torch.Tensor)}
    with torch.no_grad():
        for p, n in names.items():
            p.copy_(before[n])
    return parameters, state


def run_step(model: torch.nn.Module, x: torch.Tensor, rng_seed: int | None = None,
             policy: Policy | str | None = None, optimizer_step: bool = True) -> StepResult:
    """Forward (inside ``policy``'s forward context, if any), ``output.mean()``, backward, and
    (``optimizer_step``) one AdamW step whose parameters and state are read and whose weight
    update is then undone (``_optimizer_step``); ``rng_seed`` reseeds first (dropout)."""
    if rng_seed is not None:
        torch.manual_seed(rng_seed)
    model.zero_grad(set_to_none=True)
    policy = get_policy(policy) if isinstance(policy, str) else policy
    with policy.forward_context(x.device) if policy is not None else contextlib.nullcontext():
        output = model(x)
    loss = loss_fn(output)
    loss.backward()
    # checkpoint_wrapper inserts a prefix into parameter names (not into state-dict keys).
    grads = {_clean(n): (p.grad.detach().clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    buffers = {_clean(n): b.detach().clone() for n, b in model.named_buffers()}
    parameters, state = _optimizer_step(model) if optimizer_step else (None, None)
    return StepResult(loss.detach(), output.detach(), grads, buffers, parameters, state)


def twin_models(flavor: Flavor, attention: str, policy: Policy | str, device: str,
                dropout: float = 0.0, reference_policy: Policy | str = "none",
                reference_attention: str | None = None):
    """A reference model (default: the same attention without checkpointing) and the variant
    model, with identical weights (one state dict loaded into both), and an input."""
    dtype = resolve_dtype(flavor, device)
    torch.manual_seed(0)
    reference = apply_policy(build_model(flavor, reference_attention or attention, device, dtype, dropout),
                             reference_policy)
    model = apply_policy(build_model(flavor, attention, device, dtype, dropout), policy)
    model.load_state_dict(reference.state_dict())
    x = family_of(flavor).input_for(flavor, device, dtype)
    return reference, model, x


def tolerance_scales(result: StepResult) -> dict[str, float]:
    """What a value's absolute tolerance scales with in ``mismatches``, from the reference step:
    ``loss`` the mean magnitude of the output, the terms the loss (their mean) sums, since the
    loss itself is ~0 for an output of mean ~0; ``output`` its largest magnitude; ``grad`` (every
    gradient) the step's largest gradient magnitude, since a gradient that is zero in exact
    arithmetic (a bias in front of a BatchNorm, which removes any per-feature constant) is
    computed as the rounding noise of terms of about that size, not of its own (at ``tiny``:
    3.5e-9 against 3.9e-2). Non-finite values are left out; 0.0 where nothing finite is left."""
    def finite(t: torch.Tensor) -> torch.Tensor:
        return t.abs().nan_to_num(0.0, 0.0, 0.0)

    def largest(tensors) -> float:
        return max((finite(t).max().item() for t in tensors if t is not None and t.numel()), default=0.0)
    mean = finite(result.output).mean().item() if result.output.numel() else 0.0
    return {"loss": mean, "output": largest([result.output]), "grad": largest(result.grads.values())}


def mismatches(expected: StepResult, actual: StepResult, rtol: float | None = None,
               atol: float | None = None, labels: tuple[str, str] = ("reference", "checkpointed")) -> list[str]:
    """Names of what differs: bitwise (``torch.equal``) when no tolerance is given. Buffers,
    parameters after the optimizer step and the optimizer's state are compared in that bitwise check of a model against its own checkpointed twin, where both
    results read them (a counter or a running statistic updated once more is another state,
    however small the difference); a comparison with a tolerance is between implementations
    (eager against sdpa, one process against sharded), whose buffers may differ by design.
    With a tolerance, ``atol`` is relative to ``tolerance_scales`` (what a value is computed
    from), never to the value itself, which may be zero in exact arithmetic. A non-finite loss
    is the one line returned; a non-finite value elsewhere is named, never compared. ``labels``
    name the two models in those lines."""
    scales = tolerance_scales(expected)

    def differs(a: torch.Tensor | None, b: torch.Tensor | None, floor: float) -> str | None:
        if a is None or b is None:
            return None if a is None and b is None else f"gradient is {'None' if b is None else 'set'} " \
                f"but the reference's is {'None' if a is None else 'set'}"
        bad = [f"{int((~torch.isfinite(t)).sum())} of {t.numel()} values not finite in the {label} model"
               for label, t in zip(labels, (a, b)) if not torch.isfinite(t).all()]
        if bad:
            return "; ".join(bad)
        if rtol is None:
            if torch.equal(a, b):
                return None
            return f"not bitwise equal (max abs diff {(a.double() - b.double()).abs().max().item():.3e})"
        scale = max(a.abs().max().item(), floor)
        try:
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol * scale if scale else atol)
        except AssertionError as exc:
            return str(exc).splitlines()[0] + f" (max abs diff {(a.double() - b.double()).abs().max().item():.3e}, scale {scale:.3e})"
        return None

    # A loss that is not finite trains nothing, however equal the two runs are; nothing else
    # is compared (its gradients are not finite either, and a tolerance cannot scale to them).
    bad = [f"the {label} model's loss is {r.loss.item()}" for label, r in zip(labels, (expected, actual))
           if not torch.isfinite(r.loss).all()]
    if bad:
        return [f"loss: {' and '.join(bad)}, not finite"]
    found = []
    for name, a, b, floor in [("loss", expected.loss, actual.loss, scales["loss"]),
                              ("output", expected.output, actual.output, scales["output"]),
                              *((f"grad {n}", expected.grads[n], actual.grads.get(n), scales["grad"])
                                for n in expected.grads)]:
        problem = differs(a, b, floor)
        if problem:
            found.append(f"{name}: {problem}")
    if rtol is None and expected.buffers is not None and actual.buffers is not None:
        for name in sorted(set(expected.buffers) | set(actual.buffers)):
            a, b = expected.buffers.get(name), actual.buffers.get(name)
            if a is None or b is None:
                found.append(f"buffer {name}: only in the {'checkpointed' if a is None else 'reference'} model")
            elif a.shape != b.shape or not torch.equal(a, b):
                found.append(f"buffer {name}: {a.tolist() if a.numel() == 1 else 'values'} in the reference, "
                             f"{b.tolist() if b.numel() == 1 else 'other values'} in the checkpointed model after the step")
        # A parameter whose gradient differs is already named; its state after the step follows.
        named = {f[len("grad "):].split(":")[0] for f in found if f.startswith("grad ")}
        for what, ref, got in (("parameter", expected.parameters, actual.parameters),
                               ("optimizer state", expected.optimizer_state, actual.optimizer_state)):
            if ref is None or got is None:
                continue
            for name in sorted(set(ref) | set(got)):
                if (name if what == "parameter" else name.rsplit(".", 1)[0]) in named:
                    continue
                a, b = ref.get(name), got.get(name)
                if a is None or b is None:
                    found.append(f"{what} {name}: only in the {'checkpointed' if a is None else 'reference'} model's step")
                elif a.shape != b.shape:
                    found.append(f"{what} {name}: shape {tuple(b.shape)}, the reference's {tuple(a.shape)}")
                elif not torch.equal(a, b):
                    found.append(f"{what} {name}: not bitwise equal to the reference's after the optimizer step "
                                 f"(max abs diff {(a.double() - b.double()).abs().max().item():.3e})")
    return found
