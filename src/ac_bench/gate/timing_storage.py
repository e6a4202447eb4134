"""Which stored timings may be compared with this run's: one history per timing key (a GPU's
device key, or the CPU's processor model and generation), and a refusal, in one line, to compare
across device keys, processor models or generations, timers or timing thread counts."""

from __future__ import annotations

from pathlib import Path

from ac_bench.probes.device import processor_key


def timing_storage(baselines_dir: Path, device_key: str, timing_key: str) -> Path:
    """Where a timing key's committed history lives: ``baselines/<gpu>/timing`` for a GPU,
    ``baselines/cpu/timing/<processor key>`` for a CPU (``amd-epyc-f25-m17``: model name and
    generation; the figures stay in ``baselines/cpu``, shared by every CPU)."""
    folder = Path(baselines_dir) / device_key / "timing"
    return folder / timing_key.removeprefix(f"{device_key}-") if timing_key != device_key else folder


def timing_identity(machine_info: dict, benchmarks: list) -> dict:
    """What makes two timings comparable, read from a run's machine_info.

    On the CPU the timing key is derived from the processor's name and generation
    (``processor_key``). Runs saved before the suite recorded the generation
    (``torch.processor_generation``) take it from pytest-benchmark's own ``cpu.family`` and
    ``cpu.model`` (py-cpuinfo's, the same numbers as /proc/cpuinfo's), and the processor from
    ``cpu.brand_raw`` where the suite did not record it either; their own ``timing_key`` (the
    name alone) is not used. Where neither is there, ``generation`` is None: unknown. The timer
    of a run that did not record it is read from the benchmarks' options."""
    info = machine_info.get("torch", {}) or {}
    cpu = machine_info.get("cpu", {}) or {}
    device = info.get("device_key")
    processor = info.get("processor") or cpu.get("brand_raw")
    if "processor_generation" in info:
        generation = info["processor_generation"] or {}
    else:
        generation = {name: cpu[name] for name in ("family", "model") if isinstance(cpu.get(name), int)}
        generation = generation if len(generation) == 2 else None
    if device == "cpu":
        key = f"cpu-{processor_key(processor, generation)}" if processor else None
    else:
        key = info.get("timing_key") or device
    timer = info.get("timer") or next((b.get("options", {}).get("timer") for b in benchmarks), None)
    return {"device_key": device, "timing_key": key, "processor": processor, "generation": generation,
            "timer": str(timer).rsplit(".", 1)[-1] if timer else None, "threads": info.get("timing_threads")}


def describe_processor(identity: dict) -> str:
    """A processor for a message: ``'AMD EPYC' (family 25, model 17)``."""
    generation = identity["generation"]
    numbers = ", ".join(f"{name} {value}" for name, value in (generation or {}).items())
    return f"{identity['processor']!r}" + (f" ({numbers})" if numbers else "")


def timing_comparison_refusal(machine_info: dict, compared_benchmark: dict) -> str | None:
    """Why a stored run's timings cannot be compared with this run's, or None if they can."""
    saved = timing_identity(compared_benchmark.get("machine_info", {}) or {}, compared_benchmark.get("benchmarks", []))
    current = timing_identity(machine_info, [])
    if saved["device_key"] is None:
        return ("the stored run records no device key (machine_info.torch, written by this suite's plugin), so it "
                "was not saved by this suite or was edited; save a run here (--benchmark-save NAME) and compare "
                "against that.")
    if saved["device_key"] != current["device_key"]:
        return (f"the stored run was measured on device key {saved['device_key']!r}, this run is on "
                f"{current['device_key']!r}; timings of different devices are not comparable. Point "
                f"--benchmark-storage at this device's history (default: baselines/<device key>/timing).")
    here = (current["timing_key"] or "").removeprefix("cpu-")
    if current["device_key"] == "cpu" and saved["generation"] is None and current["generation"]:
        return (f"the stored run records no processor generation (cpu family and model) for {saved['processor']!r}, "
                f"this run is on {describe_processor(current)}; CPU timings of different processor generations are "
                f"not comparable and this cannot tell them apart. Save a run on this machine (--benchmark-save NAME, "
                f"into baselines/cpu/timing/{here}) and compare against that.")
    if saved["timing_key"] != current["timing_key"]:
        return (f"the stored run was timed on processor {describe_processor(saved)}, this run on "
                f"{describe_processor(current)}; CPU timings of different processor models are not comparable. "
                f"Compare against this processor's own history (default: baselines/cpu/timing/{here}; "
                f"start one with --benchmark-save NAME).")
    if (saved["timer"], saved["threads"]) != (current["timer"], current["threads"]):
        return (f"the stored run was timed with {saved['timer']} and {saved['threads']} timing threads, this run "
                f"with {current['timer']} and {current['threads']}; different clocks are not comparable. Save a "
                f"run with this suite's timer (--benchmark-save NAME) and compare against that.")
    return None
