"""What the suite's command lines share: errors on one line, output files checked first."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ac_bench.outputs import file_problem
from ac_bench.report.load import ReportInputError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (naming the option, what is wrong and where
    help is) instead of the usage block and the error; exit status 2 as argparse's."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def check_output_files(**paths: Path | None) -> None:
    """Each output option's file (``markdown=PATH``), checked before any work: a missing or
    unwritable folder, a folder given as the file, or a ``plot`` not named ``.png`` is a
    ReportInputError naming the option."""
    for option, path in paths.items():
        if path is not None:
            problem = file_problem(Path(path))
            if str(path) == "-":  # not stdout: it wrote a file named "-"
                problem = "give a file name (the tables are printed on stdout already)"
            if not problem and option == "plot" and Path(path).suffix.lower() != ".png":
                problem = "the plot is a PNG; give a file name ending in .png"  # it wrote PNG bytes as x.jpg
            if problem:
                raise ReportInputError(f"--{option.replace('_', '-')} {path}: {problem}")


def add_flavor_arguments(parser: argparse.ArgumentParser, default: str = "seed") -> None:
    """``--model-spec`` (repeatable, as pytest's) and ``--flavor``, resolved after parsing by
    ``chosen_flavor``: a flavor of a ``--model-spec`` family is not registered while argparse
    reads ``--flavor``, so the name is checked once the families are loaded."""
    from ac_bench.models import FLAVORS
    builtin = ", ".join(name for name, flavor in FLAVORS.items() if flavor.family in ("transformer", "llama"))
    parser.add_argument("--model-spec", action="append", default=[], metavar="package.module:NAME",
                        help="register your own model family first (as pytest bench/ --model-spec; repeatable), "
                             "e.g. examples.my_family:SPEC; its flavors become --flavor names")
    parser.add_argument("--flavor", default=None, metavar="NAME",
                        help=f"the suite's ({builtin}) or a --model-spec family's (default: {default}, or with "
                             f"--model-spec the first flavor of its first family)")
    parser.set_defaults(flavor_default=default)


def chosen_flavor(args: argparse.Namespace):
    """The ``Flavor`` that ``--flavor`` names, after registering each ``--model-spec`` family.
    A flavor of a ``--model-spec`` family is built first (``cases.build_problem``, on the meta
    device). Raises ReportInputError (one line) for a spec that does not load, an unknown flavor
    name, or a family whose model does not build or has no ``blocks``."""
    from ac_bench.cases import build_problem
    from ac_bench.models import family_of, get_flavor, load_family_specs
    try:
        loaded = load_family_specs(args.model_spec)  # in order, each with the spec that loaded it
        families, specs = [family for _, family in loaded], {family.name: spec for spec, family in loaded}
        name = args.flavor if args.flavor is not None else (families[0].flavors[0].name if families
                                                            else args.flavor_default)
        flavor = get_flavor(name)
    except ValueError as exc:
        raise ReportInputError(str(exc)) from None
    if flavor.family in specs:  # the user's family: it builds, and keeps the contract, before anything is measured
        for attention in family_of(flavor).attentions:
            problem = build_problem(flavor, attention, "cpu")
            if problem:
                raise ReportInputError(f"--model-spec {specs[flavor.family]!r}: {problem}; fix the family's build function")
    return flavor


#: The largest memory budget the commands take (GiB): beyond it bytes no longer fit a float's
#: whole numbers, and no device has it.
MAX_GIB = 2 ** 20


def gib_type(what: str, zero: bool = False):
    """An argparse ``type`` for a number of GiB (a float) up to ``MAX_GIB``: at least one byte, or from 0
    where ``zero`` (a host budget of 0 offloads nothing). ``what`` names it in the error, "the
    budget". Raises argparse.ArgumentTypeError, one line."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of GiB, got {text!r}") from None
        if zero:
            if not (math.isfinite(value) and 0 <= value <= MAX_GIB):
                raise argparse.ArgumentTypeError(f"{what} must be a number of GiB from 0 to {MAX_GIB}, got {text!r}")
            return value
        if not math.isfinite(value) or value <= 0:
            finite = "" if math.isfinite(value) else ", and finite"
            raise argparse.ArgumentTypeError(f"{what} must be a positive number of GiB{finite}, got {text!r}")
        if value > MAX_GIB:
            raise argparse.ArgumentTypeError(f"{what} must be at most {MAX_GIB} GiB, got {text!r}")
        if int(value * 2 ** 30) < 1:  # 1e-300 GiB is 0 bytes (a traceback in the planner before)
            raise argparse.ArgumentTypeError(f"{what} must be at least one byte ({1 / 2 ** 30:.3g} GiB), got {text!r}")
        return value
    return parse


def check_device(device: str) -> None:
    """``--device cuda`` on a machine without CUDA is one line (ReportInputError), before any work."""
    from ac_bench.probes.device import cuda_available
    if device == "cuda" and not cuda_available():
        raise ReportInputError("--device cuda: no CUDA device is available")


def flavor_options(args: argparse.Namespace, flavor) -> str:
    """``--model-spec S ... --flavor NAME`` as a command line repeats them (a Regenerate line)."""
    return " ".join([*(f"--model-spec {spec}" for spec in args.model_spec), f"--flavor {flavor.name}"])


def number(value: float) -> str:
    """A float as a command line gives it back exactly: ``%g`` where that is the same number
    (0.45, 80), else ``repr`` (0.00321456789)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def solver_prefix() -> str:
    """``AC_BENCH_MILP_SOLVER=cbc `` where the environment picks the MILP's solver (a Regenerate
    line that repeats it gives the same plan), else nothing."""
    import os

    from ac_bench.milp import SOLVER_ENV
    value = os.environ.get(SOLVER_ENV, "").strip()
    return f"{SOLVER_ENV}={value} " if value else ""
