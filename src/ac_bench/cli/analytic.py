"""The analytic model's command line: ``python -m ac_bench.analytic [--flavor NAME]
[--device-type cuda|cpu]`` explains where a flavor's activation memory goes."""

from __future__ import annotations

import torch

from ac_bench.analytic import explain, family_model
from ac_bench.cli.common import ArgumentParser
from ac_bench.models import FLAVORS, get_flavor
from ac_bench.models.families import FAMILIES


def main(argv: list[str] | None = None) -> int:
    """``python -m ac_bench.analytic [--flavor NAME] [--device-type cuda|cpu]``: ``explain``'s answer.
    A bad option is one line on stderr and exit status 2."""
    parser = ArgumentParser(prog="python -m ac_bench.analytic", description=explain.__doc__)
    parser.add_argument("--flavor", default="seed", choices=[f for f in FLAVORS
                                                             if family_model(FAMILIES[FLAVORS[f].family]) is not None])
    parser.add_argument("--device-type", default="cuda", choices=["cuda", "cpu"],
                        help="LayerNorm keeps fp32 statistics on CUDA, input-dtype ones on the CPU")
    args = parser.parse_args(argv)
    chosen = get_flavor(args.flavor)
    print(explain(chosen, getattr(torch, chosen.dtype), args.device_type))
    return 0

