"""Every test passes alone and in any order (issue 21): self-test modules whose tests once
passed only in company (``tests/test_policies.py`` read ``torch._functorch.config`` that an
earlier test's forward imported), run reversed and shuffled in child processes."""

from __future__ import annotations

import os

import pytest

from tests.helpers import run_pytest

MODULES = ("tests/test_policies.py", "tests/test_gradient_check.py", "tests/test_timing_band.py")


def collected(order: str, monkeypatch) -> list[str]:
    monkeypatch.setitem(os.environ, "AC_SHUFFLE_SEED", order)
    result = run_pytest(*MODULES, "-p", "tests.plugins.shuffle", "--collect-only", "-q")
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_the_shuffle_reorders(monkeypatch):
    plain, reverse, shuffled = (collected(o, monkeypatch) for o in ("", "reverse", "1"))
    assert len(plain) > 30 and reverse == plain[::-1] and sorted(shuffled) == sorted(plain) and shuffled != plain, (
        f"{len(plain)} tests; reversed {reverse[:2]}, shuffled {shuffled[:2]}, plain {plain[:2]}")


# make test runs the whole suite shuffled (-p randomly), these three modules included: the two
# child runs (24 s) are deep, for make test's 20 minutes; tox -e cpu runs them.
@pytest.mark.deep
@pytest.mark.parametrize("order", ["reverse", "1"])
def test_self_tests_pass_in_any_order(order, monkeypatch):
    monkeypatch.setitem(os.environ, "AC_SHUFFLE_SEED", order)
    result = run_pytest(*MODULES, "-p", "tests.plugins.shuffle", "-q", timeout=600)
    assert result.returncode == 0, f"in order {order!r}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"


def test_the_test_that_needed_company_passes_alone():
    result = run_pytest("tests/test_policies.py::test_compile_budget_records_its_backend_and_patches_the_partitioner",
                        "-q", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
