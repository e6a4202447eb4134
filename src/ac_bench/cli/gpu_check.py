"""The prepared one-shot GPU check: the whole suite on CUDA, and everything a reader needs in
one folder.

    scripts/gpu-check OUTDIR [--flavor seed] [--timeout-s 480]     (or: make gpu-check OUT=OUTDIR)

On a machine with one CUDA GPU and a CUDA torch already installed it runs, in this order:
1. ``pytest bench/ --device cuda --flavor seed --update-baselines --benchmark-autosave``, writing
   ``OUTDIR/gpu.json`` and the new baselines into ``OUTDIR/baselines/<gpu>/`` (figures.json and
   pytest-benchmark's timing storage): every assertion runs, the gate stages instead of comparing;
2. the gate alone (``pytest bench/ -m gate``) against the committed ``baselines/<gpu>/figures.json``
   (skipped with its reason where none is committed yet);
3. ``python -m ac_bench.report table`` into ``OUTDIR/report.md`` and ``OUTDIR/pareto.png``;
4. ``scripts/scale_vs_device.py``: the at-scale estimate (``ac_bench.scale``, fake process group on
   the CPU) against a real FSDP2 step at world size 1 on the GPU, ``llama3-8b-4l`` (4 layers at
   Llama-3-8B's width, sequence 8192, bf16), figure by figure, into ``OUTDIR/scale-vs-cuda.md``;
5. ``plan --space blocks --offload-cost 0`` at ``seed`` (sdpa, 0.5 GiB) on the GPU, offloaded
   layers for real (``save_on_cpu``, pinned), and on the CPU's simulated host, into
   ``OUTDIR/offload-plan-cuda.md`` and ``OUTDIR/offload-plan-cpu.md``: each the chosen plan's
   predicted and measured peak;
6. ``OUTDIR/summary.txt``: per variant the CUDA measurement against the CPU's fake-tensor
   estimate (the committed ``baselines/cpu/figures.json``), the time/FLOP ratios, the outcome
   of each step.
It runs in the repository (``--repo``, default the current folder: scripts/gpu-check gives its
own; a relative OUTDIR is read from the folder it is run in), whose ``bench/`` holds the benchmark. It exits non-zero when any step failed, after
writing the summary. ``--summary-only`` rewrites
the summary from an existing ``OUTDIR/gpu.json`` (no GPU needed; the self-tests use it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ac_bench.outputs import folder_problem

#: Metrics compared against the CPU estimate, with the relative tolerance the suite asserts
#: (activation_peak_bytes: an absolute allowance, ``ac_bench.probes.device.cuda_backward_allowance``).
ESTIMATE_CHECKS = (("forward_kept_bytes", 0.02), ("activation_peak_bytes", "allowance"), ("peak_bytes", None),
                   ("flops", 0.0))


def _beyond(record: dict, metric: str, tol, new: int, old: int) -> bool:
    """Whether the CUDA figure ``new`` disagrees with the estimate ``old`` as the suite judges it."""
    if tol is None:
        return False
    if tol != "allowance":
        return abs(new / old - 1) > tol
    from ac_bench import analytic
    from ac_bench.probes.device import cuda_backward_allowance
    from ac_bench.record import Measurement
    shape = analytic.Shape.of_record(Measurement.from_dict(record))
    allowance = cuda_backward_allowance(analytic.attention_score_bytes(shape, "eager"), record["attention"])
    return not -0.02 * new <= new - old <= allowance


#: The per-block plan with offloaded layers compared between the GPU and the CPU's simulated
#: host: at a cost of 0 per offloaded byte the solver offloads wherever that saves recompute.
OFFLOAD_PLAN = ("plan", "--space", "blocks", "--flavor", "seed", "--attention", "sdpa", "--budget-gib", "0.5",
                "--offload-cost", "0")


class CheckError(Exception):
    """Input the check cannot use; the message says what and how to fix it."""


def _run(step: str, cmd: list[str], log: Path, timeout_s: float, repo: Path) -> dict:
    start = time.monotonic()
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=repo, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"step": step, "rc": rc, "seconds": round(time.monotonic() - start, 1)}


def _load_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckError(f"{path}: no such file ({what})") from None
    except (OSError, ValueError) as exc:
        raise CheckError(f"{path}: not readable JSON ({what}): {exc}") from None


def summary_text(gpu_json: Path, cpu_figures: Path, steps: list[dict]) -> str:
    """The summary: steps, CUDA against the CPU estimate per variant, time/FLOP ratios."""
    data = _load_json(gpu_json, "the --benchmark-json of the CUDA run")
    records = data.get("measurements")
    if not isinstance(records, list) or not records:
        raise CheckError(f"{gpu_json}: no 'measurements' records: not written by this suite's pytest run")
    cpu = _load_json(cpu_figures, "the committed CPU figures").get("entries", {}) if cpu_figures.exists() else {}
    medians = {b.get("extra_info", {}).get("variant"): b.get("stats", {}).get("median")
               for b in data.get("benchmarks", []) if "variant" in b.get("extra_info", {})}
    lines = ["GPU check", f"device: {data.get('machine_info', {}).get('torch', {}).get('device_name', '?')}, "
             f"torch {records[0].get('torch_version')}", ""]
    lines += [f"step {s['step']}: {'ok' if s['rc'] == 0 else 'FAILED (' + str(s['rc']) + ')'} in {s['seconds']} s"
              for s in steps]
    lines += ["", "CUDA measurement against the CPU fake-tensor estimate (committed baselines/cpu/figures.json), "
              "relative difference; * = beyond the suite's tolerance; offload not compared"]
    header = (f"{'variant':24}" + "".join(f"{m:>24}" for m, _ in ESTIMATE_CHECKS) + f"{'median ms':>11}"
              + f"  {'kernel (attention_kernel; - where not recorded)'}")
    lines.append(header)
    disagreements = 0
    for r in sorted(records, key=lambda r: r.get("variant", "")):
        # offload: on the CPU the host is the device, so its estimate is none's by design.
        est = {} if r.get("policy") == "offload" else cpu.get(f"{r.get('flavor')}-{r.get('variant')}", {})
        cells = []
        for metric, tol in ESTIMATE_CHECKS:
            new, old = r.get(metric), est.get(metric)
            if not isinstance(new, int) or not isinstance(old, int) or not old:
                cells.append(f"{'-':>24}")
                continue
            diff = new / old - 1
            try:
                flag = "*" if _beyond(r, metric, tol, new, old) else " "
            except ValueError as exc:
                raise CheckError(f"{gpu_json}: {exc}") from None
            disagreements += flag == "*"
            cells.append(f"{new:>14,} {diff:+7.2%}{flag}")
        median = medians.get(r.get("variant"))
        lines.append(f"{r.get('variant', '?'):24}" + "".join(cells) + (f"{median * 1e3:>11.2f}" if median else f"{'-':>11}")
                     + f"  {r.get('attention_kernel') or '-'}")
    lines += ["", f"figures beyond tolerance: {disagreements}", "", "time(policy)/time(none) against the FLOP ratio:"]
    for key, ratio in sorted((data.get("time_ratios") or {}).items()):
        lines.append(f"  {key:28} time {ratio.get('time_ratio', float('nan')):.3f}   FLOPs {ratio.get('flop_ratio', float('nan')):.3f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, help="folder for everything the check writes (created)")
    parser.add_argument("--flavor", default="seed", help="flavors to run on CUDA (default: seed)")
    parser.add_argument("--timeout-s", type=float, default=480.0, help="limit for the whole suite run (default 480)")
    parser.add_argument("--repo", type=Path, default=Path.cwd(),
                        help="the repository whose bench/ and baselines/ the check uses (default: the current folder)")
    parser.add_argument("--summary-only", action="store_true",
                        help="only rewrite OUTDIR/summary.txt from an existing OUTDIR/gpu.json (no GPU needed)")
    args = parser.parse_args(argv)
    out: Path = args.outdir.absolute()  # the steps run in --repo: a relative OUTDIR is the caller's
    try:
        if out.exists() and not out.is_dir():
            raise CheckError(f"{out} exists and is not a folder; give a folder to write into")
        problem = folder_problem(out, create=True)  # a folder under a file, or unwritable: before the run
        if problem:
            raise CheckError(f"{out}: {problem}")
        out.mkdir(parents=True, exist_ok=True)
        steps: list[dict] = []
        if not args.summary_only:
            import torch

            from ac_bench.probes.device import cuda_available
            if not cuda_available():
                raise CheckError(f"torch {torch.__version__} sees no CUDA device; run this on a machine with a GPU "
                                 f"and a CUDA build of torch (or use --summary-only)")
            log = out / "log.txt"
            py = sys.executable
            steps.append(_run("suite", [py, "-m", "pytest", "bench/", "--device", "cuda", "--flavor", args.flavor, "-ra",
                                        "-p", "no:cacheprovider", "--update-baselines", "--benchmark-autosave",
                                        "--baselines-dir", str(out / "baselines"), "--benchmark-json", str(out / "gpu.json")],
                              log, args.timeout_s, args.repo))
            steps.append(_run("gate", [py, "-m", "pytest", "bench/", "-m", "gate", "--device", "cuda", "--flavor",
                                       args.flavor, "-ra", "-q", "-p", "no:cacheprovider"], log, args.timeout_s / 2, args.repo))
            steps.append(_run("report", [py, "-m", "ac_bench.report", "table", str(out / "gpu.json"), "--markdown",
                                         str(out / "report.md"), "--plot", str(out / "pareto.png")], log, 120, args.repo))
            steps.append(_run("scale", [py, "scripts/scale_vs_device.py", "--flavor", "llama3-8b-4l", "--depth", "4",
                                        "--device", "cuda", "--no-mixed-precision", "--out",
                                        str(out / "scale-vs-cuda.md")], log, 240, args.repo))
            for device in ("cuda", "cpu"):  # offloaded layers for real (pinned save_on_cpu) and simulated
                steps.append(_run(f"offload-{device}", [py, "-m", "ac_bench.report", *OFFLOAD_PLAN, "--device", device,
                                                         "--markdown", str(out / f"offload-plan-{device}.md")],
                                  log, 180, args.repo))
        cpu_figures = args.repo / "baselines" / "cpu" / "figures.json"
        (out / "summary.txt").write_text(summary_text(out / "gpu.json", cpu_figures, steps))
    except CheckError as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 2
    print((out / "summary.txt").read_text(), end="")
    return 0 if all(s["rc"] == 0 for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
