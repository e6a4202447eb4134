"""The parametrization: what a test's fixtures ask for (``case``, ``flavor_on_device``,
``cuda_case``) becomes one parameter per selected case, with device gating as marks on the
parameters (Lightning's ``RunIf`` pattern), so that a skip shows its reason under ``-ra``."""

from __future__ import annotations

import pytest

from ac_bench.cases import cases, growth_flavors
from ac_bench.plugin.options import selected_device, selected_flavors
from ac_bench.probes.device import cuda_available
from ac_bench.record import is_estimate

#: Device gating as a mark: skipped with the reason where no CUDA device is available.
requires_cuda = pytest.mark.skipif(not cuda_available(), reason="requires CUDA: no CUDA device is available")


def device_marks(device: str) -> list:
    """The marks every parameter on ``device`` carries."""
    return [requires_cuda] if device == "cuda" else []


def selected(config: pytest.Config, real_tensors: bool = False) -> tuple[str, tuple]:
    """The session's device and flavors; ``real_tensors``: without the flavors only estimated
    on this device (``seed`` on the CPU)."""
    device = selected_device(config)
    flavors = selected_flavors(config)
    if real_tensors:
        flavors = tuple(f for f in flavors if not is_estimate(f, device))
    return device, flavors


def generate(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``case``, ``flavor_on_device``, ``cuda_case`` and ``growth_case`` over the selection."""
    config = metafunc.config
    device, flavors = selected(config, real_tensors=bool(metafunc.definition.get_closest_marker("real_tensors")))
    marks = device_marks(device)
    attention = metafunc.definition.get_closest_marker("attention")
    if "case" in metafunc.fixturenames:
        chosen = [c for c in cases(device, flavors) if attention is None or c.attention == attention.args[0]]
        metafunc.parametrize("case", [pytest.param(c, id=c.id, marks=marks) for c in chosen])
    if "growth_case" in metafunc.fixturenames:
        # Every variant of each selected family's cheapest flavor, then of every selected flavor
        # with --slow (ac_bench.cases.growth_flavors says why).
        quick = growth_flavors(flavors)
        slow = [pytest.mark.slow, pytest.mark.growth_all]
        params = [pytest.param(c, id=c.id, marks=marks + ([] if c.flavor in quick else slow))
                  for c in cases(device, tuple(dict.fromkeys((*quick, *flavors))))]
        metafunc.parametrize("growth_case", params)
    if "flavor_on_device" in metafunc.fixturenames:
        params = [pytest.param((device, f), id=f"{device}-{f.name}", marks=marks) for f in flavors]
        metafunc.parametrize("flavor_on_device", params)
    if "cuda_case" in metafunc.fixturenames:
        # Always parametrized on cuda, so on a CPU machine they show as skipped with the reason.
        cuda_flavors = tuple(f for f in flavors if f.cpu_mode == "estimate") or flavors
        cuda_marks = [requires_cuda]
        if config.getoption("--device") == "cpu":
            cuda_marks.append(pytest.mark.skip(reason="CUDA-only test, and --device cpu was given"))
        params = [pytest.param(c, id=c.id, marks=cuda_marks) for c in cases("cuda", cuda_flavors)]
        metafunc.parametrize("cuda_case", params)


def skip_unselected(config: pytest.Config, items: list, benchmark_active: bool) -> None:
    """Slow tests skip without --slow, timing tests without pytest-benchmark, each saying why."""
    if not config.getoption("--slow"):
        slow = pytest.mark.skip(reason="slow: runs with --slow (make test, tox -e gpu and the nightly job pass it)")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(slow)
    if not benchmark_active:
        skip = pytest.mark.skip(reason="pytest-benchmark is disabled (-p no:benchmark): timing tests do not run")
        for item in items:
            if item.get_closest_marker("timing"):
                item.add_marker(skip)
