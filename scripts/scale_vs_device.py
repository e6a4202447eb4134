"""The at-scale estimate against a real FSDP2 run at world size 1, figure by figure.

    python scripts/scale_vs_device.py --model llama3-8b --depth 4 --device cuda --out scale-vs-h200.md

For each variant: rank 0 of world size 1 estimated on the CPU (``ac_bench.scale.estimate_rank``:
fake process group, fake tensors), then the same step run for real on ``--device`` (a process
group of one: NCCL on CUDA, gloo on the CPU; ``fully_shard`` per layer and root with the same
mixed precision; the CUDA allocator's figures, or FSDPMemTracker's on the CPU). Writes a
Markdown table of every memory figure and FLOPs with the difference, and prints it. On the CPU
(``--device cpu --flavor tiny``) the two must agree as ``bench/test_scale.py`` asserts, but for an
offloading variant, which the estimate sends to a simulated host and the CPU keeps in place; on
a GPU the table is what the estimate leaves out (allocator rounding, CUDA context, workspaces).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ac_bench.distributed import measure_sharded
from ac_bench.models import get_flavor
from ac_bench.probes.device import distributed_backend, rank_device
from ac_bench.scale import SCALE_MODELS, ScaleError, ShardedSetup, at, estimate_rank, scale_model

FIGURES = ("resident_bytes", "peak_bytes", "activation_peak_bytes", "optimizer_step_peak_bytes",
           "forward_kept_bytes", "offloaded_bytes", "flops")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare(flavor, variants: list[str], setup: ShardedSetup, device_type: str) -> list[str]:
    """Markdown lines: one row per variant and figure, estimate against the device."""
    estimates = {v: estimate_rank(flavor, v, setup) for v in variants}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    dist.init_process_group(distributed_backend(device_type))
    try:
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(device_type, (1,))
        device = rank_device(device_type, 0)
        real = {v: measure_sharded(flavor, v, device, 1, 0, timed=False, **setup.fsdp_kwargs(mesh)) for v in variants}
    finally:
        dist.destroy_process_group()
    lines = [f"{flavor.name}, {flavor.depth} layers, batch {flavor.batch}, sequence {flavor.seq_len}, FSDP2 at world "
             f"size 1, mixed precision {setup.mp_param_dtype}/{setup.mp_reduce_dtype}; estimate "
             f"({next(iter(estimates.values())).memory_method}, CPU) against {device_type} "
             f"({next(iter(real.values())).memory_method}, torch {torch.__version__})", "",
             "| variant | figure | estimate | measured | measured - estimate | % |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for v in variants:
        for name in FIGURES:
            e, m = getattr(estimates[v], name), getattr(real[v], name)
            pct = f"{(m - e) / e:+.2%}" if e else "-"
            lines.append(f"| {v} | {name} | {e:,} | {m:,} | {m - e:+,} | {pct} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(SCALE_MODELS), help="a Llama 3 shape (transformers)")
    p.add_argument("--flavor", help="or a flavor of the suite (tiny, small)")
    p.add_argument("--depth", type=int, default=4, help="layers (default %(default)s: fits one GPU at 8B)")
    p.add_argument("--seq-len", type=int, default=None)
    # whole_layers_offload: the estimate's simulated host against pinned save_on_cpu on a GPU
    # (on the CPU nothing moves, so there the two differ by design).
    p.add_argument("--variants", default="none-sdpa,whole_layers-sdpa,whole_layers_offload-sdpa,full-sdpa,sac-sdpa")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--no-mixed-precision", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="the Markdown table")
    args = p.parse_args(argv)
    try:
        if (args.model is None) == (args.flavor is None):
            raise ScaleError("give one of --model and --flavor")
        base = scale_model(args.model) if args.model else get_flavor(args.flavor)
        flavor = at(base, depth=args.depth, seq_len=args.seq_len)
        mp = {"mp_param_dtype": None, "mp_reduce_dtype": None} if args.no_mixed_precision else {}
        lines = compare(flavor, [v.strip() for v in args.variants.split(",") if v.strip()], ShardedSetup(1, **mp),
                        args.device)
    except ValueError as exc:
        print(f"scale_vs_device: {exc}", file=sys.stderr)
        return 2
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
