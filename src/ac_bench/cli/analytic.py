"""The analytic model's command line: ``python -m ac_bench.analytic [--model-spec S] [--flavor NAME]
[--device cuda|cpu]`` explains where a flavor's activation memory goes."""

from __future__ import annotations

import torch

from ac_bench.analytic import explain, family_model
from ac_bench.cli.common import ArgumentParser, add_flavor_arguments, chosen_flavor
from ac_bench.models.families import FAMILIES
from ac_bench.report.load import ReportInputError, exit_status


def main(argv: list[str] | None = None) -> int:
    """``python -m ac_bench.analytic [--flavor NAME] [--device cuda|cpu]``: ``explain``'s answer.
    A bad option, or a flavor whose family declares no analytic model, is one line on stderr and
    exit status 2."""
    parser = ArgumentParser(prog="python -m ac_bench.analytic", description=explain.__doc__)
    add_flavor_arguments(parser)
    parser.add_argument("--device", "--device-type", dest="device_type", default="cuda", choices=["cuda", "cpu"],
                        help="the device the model is for, whatever machine runs this (default %(default)s): "
                             "LayerNorm keeps fp32 statistics on CUDA, input-dtype ones on the CPU; --device-type is "
                             "the older spelling")
    args = parser.parse_args(argv)

    def command() -> None:
        chosen = chosen_flavor(args)
        if family_model(FAMILIES[chosen.family]) is None:
            raise ReportInputError(f"flavor {chosen.name}: family {chosen.family!r} declares no analytic model "
                                   f"(Family(analytic=...), docs/extending.md); the planner and the measured "
                                   f"commands (python -m ac_bench.report plan) need none")
        print(explain(chosen, getattr(torch, chosen.dtype), args.device_type))
    return exit_status(parser.prog, command)
