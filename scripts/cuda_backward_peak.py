"""Where the CUDA backward peaks, op by op: for a few seed variants, the op during which the
backward reaches its peak allocation, what was allocated before it, its outputs and the transient
inside it (what the CPU fake-tensor estimate cannot see). Needs CUDA:

    python3 scripts/cuda_backward_peak.py   (output of the H200 run: docs/gpu/2026-11-28-h200-backward-peak.txt)
"""


import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ac_bench.models import get_flavor, loss_fn
from ac_bench.record import build_training


class Peak(TorchDispatchMode):
    def __init__(s):
        super().__init__()
        s.best = (0, None, 0, 0)
        s.ops = set()
    def __torch_dispatch__(s, f, t, a=(), k=None):
        n = str(f)
        if any(w in n for w in ("attention", "flash", "efficient", "cudnn")):
            s.ops.add(n)
        before = torch.cuda.memory_allocated()
        out = f(*a, **(k or {}))
        torch.cuda.synchronize()
        m = torch.cuda.max_memory_allocated()
        outs = out if isinstance(out, (tuple, list)) else [out]
        ob = sum(x.untyped_storage().nbytes() for x in outs if isinstance(x, torch.Tensor))
        if m > s.best[0]:
            s.best = (m, n, before, ob)
        return out

for v in ["none-eager", "full-eager", "none-sdpa", "full-sdpa"]:
    tr = build_training(get_flavor("seed"), v, "cuda")
    tr.step()
    tr.optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(tr.model(tr.x))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with Peak() as p:
        loss.backward()
    m, op, before, ob = p.best
    print(f"{v}: backward peak {m:,} at {op}: allocated before it {before:,}, its outputs {ob:,}, "
          f"transient inside it {m - before - ob:,}; attention ops {sorted(p.ops)}", flush=True)
    del tr, loss
    torch.cuda.empty_cache()
