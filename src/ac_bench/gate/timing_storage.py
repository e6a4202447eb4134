"""Which stored timings may be compared with this run's: one history per timing key (a GPU's
device key, or the CPU's processor model), and a refusal, in one line, to compare across device
keys, processor models, timers or timing thread counts."""

from __future__ import annotations

from pathlib import Path

from ac_bench.probes.device import processor_key


def timing_storage(baselines_dir: Path, device_key: str, timing_key: str) -> Path:
    """Where a timing key's committed history lives: ``baselines/<gpu>/timing`` for a GPU,
    ``baselines/cpu/timing/<processor model>`` for a CPU (the figures stay in ``baselines/cpu``,
    shared by every CPU)."""
    folder = Path(baselines_dir) / device_key / "timing"
    return folder / timing_key.removeprefix(f"{device_key}-") if timing_key != device_key else folder


def timing_identity(machine_info: dict, benchmarks: list) -> dict:
    """What makes two timings comparable, read from a run's machine_info; runs saved before the
    suite recorded it give the processor from pytest-benchmark's own ``cpu.brand_raw`` and the
    timer from the benchmarks' options."""
    info = machine_info.get("torch", {}) or {}
    device = info.get("device_key")
    key = info.get("timing_key")
    processor = info.get("processor") or (machine_info.get("cpu") or {}).get("brand_raw")
    if key is None and device == "cpu":
        key = f"cpu-{processor_key(processor)}" if processor else None
    elif key is None:
        key = device
    timer = info.get("timer") or next((b.get("options", {}).get("timer") for b in benchmarks), None)
    return {"device_key": device, "timing_key": key, "processor": processor,
            "timer": str(timer).rsplit(".", 1)[-1] if timer else None, "threads": info.get("timing_threads")}


def timing_comparison_refusal(machine_info: dict, compared_benchmark: dict) -> str | None:
    """Why a stored run's timings cannot be compared with this run's, or None if they can."""
    saved = timing_identity(compared_benchmark.get("machine_info", {}) or {}, compared_benchmark.get("benchmarks", []))
    current = timing_identity(machine_info, [])
    if saved["device_key"] != current["device_key"]:
        return (f"the stored run was measured on device key {saved['device_key']!r}, this run is on "
                f"{current['device_key']!r}; timings of different devices are not comparable. Point "
                f"--benchmark-storage at this device's history (default: baselines/<device key>/timing).")
    if saved["timing_key"] != current["timing_key"]:
        return (f"the stored run was timed on processor {saved['processor']!r}, this run on "
                f"{current['processor']!r}; CPU timings of different processor models are not comparable. "
                f"Compare against this processor's own history (default: baselines/cpu/timing/<processor>; "
                f"start one with --benchmark-save NAME).")
    if (saved["timer"], saved["threads"]) != (current["timer"], current["threads"]):
        return (f"the stored run was timed with {saved['timer']} and {saved['threads']} timing threads, this run "
                f"with {current['timer']} and {current['threads']}; different clocks are not comparable. Save a "
                f"run with this suite's timer (--benchmark-save NAME) and compare against that.")
    return None
