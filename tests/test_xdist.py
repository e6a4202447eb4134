"""pytest-xdist: each worker binds its own GPU (the mapping, tested on the CPU) and takes its
share of the CPU cores, one variant's tests stay on one worker, and ``-n 2`` gives the serial
run's deterministic figures."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest
import torch

from ac_bench.probes.device import (
    bind_xdist_worker_gpu,
    share_cores_among_xdist_workers,
    xdist_worker_gpu,
    xdist_worker_index,
)
from tests.helpers import run_pytest, tox_gpu_phases


def test_each_worker_gets_its_own_gpu_round_robin():
    assert [xdist_worker_gpu(f"gw{i}", ["0", "1", "2"]) for i in range(5)] == ["0", "1", "2", "0", "1"]
    assert xdist_worker_gpu(None, ["0", "1"]) is None  # not under xdist: every GPU stays visible
    assert xdist_worker_gpu("gw1", []) is None  # a CPU machine: nothing to bind
    assert xdist_worker_index("gw12") == 12
    with pytest.raises(ValueError, match="gwN"):
        xdist_worker_index("worker-1")


def test_binding_restricts_cuda_visible_devices_to_the_workers_gpu():
    env = {"PYTEST_XDIST_WORKER": "gw1", "CUDA_VISIBLE_DEVICES": "4,5"}
    assert bind_xdist_worker_gpu(env) == "5" and env["CUDA_VISIBLE_DEVICES"] == "5"
    env = {"PYTEST_XDIST_WORKER": "gw0", "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible: unchanged
    assert bind_xdist_worker_gpu(env) is None and env["CUDA_VISIBLE_DEVICES"] == ""
    env = {"CUDA_VISIBLE_DEVICES": "4,5"}  # not a worker: unchanged
    assert bind_xdist_worker_gpu(env) is None and env == {"CUDA_VISIBLE_DEVICES": "4,5"}


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cores", "workers", "threads"), [(2, 2, 1), (16, 4, 4), (16, 3, 5), (2, 4, 1)])
def test_each_worker_takes_its_share_of_the_cores(restore_threads, cores, workers, threads):
    env = {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": str(workers)}
    assert share_cores_among_xdist_workers(env, cores=cores) == threads
    assert env["OMP_NUM_THREADS"] == str(threads) and torch.get_num_threads() == threads


def test_the_users_thread_count_and_a_run_without_workers_are_left_alone(restore_threads):
    torch.set_num_threads(2)
    for env in ({"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2", "OMP_NUM_THREADS": "2"},
                {"PYTEST_XDIST_WORKER_COUNT": "2"}, {}):
        before = dict(env)
        assert share_cores_among_xdist_workers(env, cores=2) is None
        assert env == before and torch.get_num_threads() == 2


#: A cheap selection: four tiny variants through the memory, FLOP and baseline modules.
SELECTION = ("bench/test_memory.py", "bench/test_flops.py", "bench/test_baselines.py", "--device", "cpu",
             "--flavor", "tiny", "--benchmark-skip", "-k", "none- or full-", "-p", "no:randomly")


def figures(path) -> dict[str, dict]:
    """Every record of a run by case, without the one field that is wall time."""
    return {f"{r['flavor']}-{r['variant']}": {k: v for k, v in r.items() if k != "step_seconds"}
            for r in json.loads(path.read_text())["measurements"]}


def test_two_workers_give_the_serial_figures_and_keep_a_variant_on_one_worker(tmp_path):
    serial, parallel = tmp_path / "serial.json", tmp_path / "parallel.json"
    one = run_pytest(*SELECTION, "--benchmark-json", str(serial))
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    # tox -e gpu's parallel phase, as tox.ini writes it, on three modules and -n 2 (2 cores here).
    phase = tox_gpu_phases()[0]
    assert "-n" in phase and phase[phase.index("-m") + 1] == "not timing", f"tox -e gpu's first phase: {phase}"
    modules = [w for w in SELECTION if w.startswith("bench/")]
    args = [w for word in phase for w in (modules if word == "bench/" else ["2"] if word == "auto" else
                                           ["-k", "none- or full-", "-v", "--benchmark-json", str(parallel)]
                                           if word == "{posargs}" else [word])]
    two = run_pytest(*args)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "scheduling tests via CaseScheduling" in two.stdout  # -n alone: --dist loadgroup, by case
    workers = defaultdict(set)
    for worker, case in re.findall(r"\[(gw\d+)\] \[\s*\d+%\] \w+ \S+\[(cpu-tiny-[\w-]+)\]", two.stdout):
        workers[case].add(worker)
    assert len(workers) == 4 and all(len(w) == 1 for w in workers.values()), dict(workers)
    assert len({w for ws in workers.values() for w in ws}) == 2  # both workers got work
    assert figures(parallel) == figures(serial) and len(figures(serial)) == 4


@pytest.mark.parametrize(("device", "visible", "workers"), [
    ("cuda", "0,1,2", 3),    # -n auto on CUDA: one worker per visible GPU
    (None, "4,5", 2),         # no --device: CUDA when there is a GPU
    ("cuda", "", None),       # no GPU visible: pytest-xdist's own count
    ("cpu", "0,1,2", None),   # the CPU: pytest-xdist's own count (the cores), GPUs or not
])
def test_n_auto_counts_gpus_on_cuda(monkeypatch, device, visible, workers):
    from ac_bench.plugin import xdist

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    config = type("Config", (), {"getoption": lambda self, name: {"--device": device}[name]})()
    assert xdist.auto_num_workers(config) == workers, f"--device {device}, GPUs {visible!r}"


def test_a_shared_launch_is_one_work_unit_by_module_or_by_function():
    """``ac_bench_shared_launch_modules``: a module's tests, or one function's parameters, form one
    unit (each worker that ran one of the 4-rank tests launched its own 4 ranks before); a case's
    tests form one unit across modules; anything else is left to the scheduler."""
    from ac_bench.cases import xdist_scope
    shared = ("bench/test_distributed.py", "bench/test_scale.py::test_w4")
    assert xdist_scope("bench/test_distributed.py::test_x[cpu-tiny-w2-full-sdpa]", shared) == "bench/test_distributed.py"
    assert {xdist_scope(f"bench/test_scale.py::test_w4[cpu-tiny-w4-{v}]", shared)
            for v in ("none-eager", "full-sdpa")} == {"bench/test_scale.py::test_w4"}
    assert xdist_scope("bench/test_scale.py::test_other[cpu-small-full-sdpa]", shared) == "cpu-small-full-sdpa"
    assert xdist_scope("bench/test_memory.py::test_record[cpu-small-full-sdpa]", shared) == "cpu-small-full-sdpa"
    assert xdist_scope("tests/test_cli.py::test_plain", shared) is None
