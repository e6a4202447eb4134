"""What ``resident_bytes`` holds on CUDA beyond the training state: for a few seed variants
measured in one process (as the suite measures them), every block the caching allocator has
live just before the measured step that is no parameter, gradient, optimizer state or input,
with its size and where it was allocated. Needs CUDA:

    python3 scripts/cuda_resident.py   (output of the H200 run: docs/gpu/2026-11-30-h200-resident.txt)

On the CPU the same figure is exact (parameters + gradients + AdamW state + input); on the H200
(torch 2.11) it was 4.5 to 76 MiB above that, different per variant and between runs.
"""

import collections
import gc

import torch

from ac_bench.models import get_flavor
from ac_bench.probes.device import CudaAllocatorProbe
from ac_bench.record import SavedTensorCounter, build_training, measure_step

MIB = 2 ** 20


def known_storages(training) -> dict[int, str]:
    """Block address -> what it is, for the training state."""
    known = {training.x.untyped_storage().data_ptr(): "input"}
    for p in training.model.parameters():
        known[p.untyped_storage().data_ptr()] = "parameter"
        if p.grad is not None:
            known[p.grad.untyped_storage().data_ptr()] = "gradient"
    for state in training.optimizer.state.values():
        for key, t in state.items():
            if isinstance(t, torch.Tensor) and t.is_cuda:
                known[t.untyped_storage().data_ptr()] = f"optimizer {key}"
    return known


def where(frames: list[dict]) -> str:
    keep = [f for f in frames if f.get("filename", "").endswith(".py") and "torch/cuda/memory" not in f["filename"]]
    return " <- ".join(f"{f['filename'].rsplit('/', 2)[-1]}:{f['line']} {f['name']}" for f in keep[:4]) or "?"


def report(variant: str, probe: CudaAllocatorProbe, training) -> None:
    gc.collect()
    torch.cuda.synchronize()
    known = known_storages(training)
    by_kind, unknown = collections.Counter(), collections.Counter()
    for seg in torch.cuda.memory._snapshot()["segments"]:
        for b in seg["blocks"]:
            if b["state"] != "active_allocated":
                continue
            kind = known.get(b["address"])
            if kind is not None:
                by_kind[kind] += b["size"]
            else:
                unknown[where(b.get("frames", []))] += b["size"]
    resident = probe.current()
    print(f"{variant}: foreign {probe.foreign_bytes / MIB:.1f} MiB; resident {resident:,} B = "
          + ", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in sorted(by_kind.items()))
          + f"; not training state {sum(unknown.values()) / MIB:.1f} MiB", flush=True)
    for site, size in unknown.most_common(8):
        print(f"    {size / MIB:8.2f} MiB  {site}", flush=True)


def main() -> None:
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    flavor = get_flavor("seed")
    for variant in ("none-eager", "attn-eager", "none-eager", "mlp-sdpa", "none-sdpa", "full-sdpa"):
        probe = CudaAllocatorProbe(torch.device("cuda"))
        training = build_training(flavor, variant, "cuda")
        measure_step(training, lambda t, probe=probe: probe, SavedTensorCounter,
                     after_warmup=lambda t, v=variant, probe=probe: report(v, probe, t))
        del training
        gc.collect()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
