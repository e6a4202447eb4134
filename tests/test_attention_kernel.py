"""The attention kernel that ran, in every record, and --sdpa-backend forcing one."""

from __future__ import annotations

import json

import pytest
import torch

from ac_bench.models import get_flavor
from ac_bench.probes.attention import MATH, KernelRecorder, check_backend, forced_backend
from ac_bench.record import Measurement, measure_variant
from tests.helpers import run_pytest

TINY = get_flavor("tiny")


@pytest.mark.parametrize(("variant", "kernel"), [("none-sdpa", "cpu_flash"), ("full-sdpa", "cpu_flash"),
                                                 ("none-eager", MATH)])
def test_the_record_names_the_kernel_that_ran(variant, kernel):
    assert measure_variant(TINY, variant, "cpu").attention_kernel == kernel


def test_forcing_math_is_recorded_as_math():
    with forced_backend("math"):
        assert measure_variant(TINY, "none-sdpa", "cpu").attention_kernel == MATH
    assert measure_variant(TINY, "none-sdpa", "cpu").attention_kernel == "cpu_flash"  # restored on exit


def test_the_recorder_reads_the_dispatched_op():
    q = torch.randn(1, 2, 8, 4)
    with KernelRecorder() as recorder:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert recorder.kernel == "cpu_flash"


@pytest.mark.parametrize("name", ["efficient", "cudnn"])
def test_a_kernel_the_cpu_lacks_is_a_one_line_error(name):
    with pytest.raises(ValueError, match=f"--sdpa-backend {name}: the {name} kernel cannot run on cpu for float32, "
                                         "2 heads of dimension 16: No viable backend"):
        check_backend(name, "cpu", torch.float32, 2, 16)
    check_backend("flash", "cpu", torch.float32, 2, 16)
    check_backend("math", "cpu", torch.float32, 2, 16)


def test_the_option_refuses_a_kernel_the_cpu_lacks_in_one_line():
    result = run_pytest("bench/test_flops.py", "--collect-only", "-q", "--device", "cpu", "--flavor", "tiny",
                        "--sdpa-backend", "efficient")
    assert result.returncode == 4, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == ["ERROR: --sdpa-backend efficient: the efficient kernel cannot run on cpu for float32, 2 heads of "
                      "dimension 16: No viable backend for scaled_dot_product_attention was found. This is likely due to "
                      "turning off both the math kernel and the fused kernels. (flavor tiny)"], result.stderr


def test_the_option_forces_the_kernel_for_the_session(tmp_path):
    out = tmp_path / "out.json"
    # The speed module: the analytic FLOP and memory models assume the fused kernel, so with the
    # math kernel forced bench/test_flops.py fails on sdpa variants, as it should.
    result = run_pytest("bench/test_speed.py", "-q", "--device", "cpu", "--flavor", "tiny", "-k", "training_step and none-sdpa",
                        "--sdpa-backend", "math", "--benchmark-json", str(out), "--baselines-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    records = [Measurement.from_dict(r) for r in json.loads(out.read_text())["measurements"]]
    assert [r.attention_kernel for r in records] == [MATH]
