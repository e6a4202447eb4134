"""A pytest plugin for the self-tests: the measured step of one variant runs out of device
memory, and another variant's loss is not finite, both injected on the CPU.

``AC_BENCH_OOM_VARIANT``: the variant whose measured step raises ``ac_bench.probes.device.OutOfMemoryError``
(torch.OutOfMemoryError, what CUDA raises); ``AC_BENCH_BAD_LOSS_VARIANT``: the variant whose
output, and so its loss, has ``AC_BENCH_BAD_LOSS`` added (default nan).
"""

import os

from ac_bench import record
from ac_bench.probes.device import OutOfMemoryError

_build_training = record.build_training


def _build_with_failures(flavor, variant, device, policy=None):
    training = _build_training(flavor, variant, device, policy)
    if variant == os.environ.get("AC_BENCH_OOM_VARIANT"):
        forwards = []

        def out_of_memory(module, args):
            forwards.append(1)
            if len(forwards) == 2:  # the first forward is the warm-up step's; this is the measured one
                raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the self-test)")

        training.model.register_forward_pre_hook(out_of_memory)
    if variant == os.environ.get("AC_BENCH_BAD_LOSS_VARIANT"):
        factor = float(os.environ.get("AC_BENCH_BAD_LOSS", "nan"))
        training.model.register_forward_hook(lambda module, args, output: output + factor)
    return training


record.build_training = _build_with_failures
