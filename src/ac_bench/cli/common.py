"""What the suite's command lines share: errors on one line, output files checked first."""

from __future__ import annotations

import argparse
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
    unwritable folder, or a folder given as the file, is a ReportInputError naming the option."""
    for option, path in paths.items():
        if path is not None:
            problem = file_problem(Path(path))
            if problem:
                raise ReportInputError(f"--{option.replace('_', '-')} {path}: {problem}")
