"""``-p tests.plugins.shuffle``: run the collected tests in an order shuffled by
``AC_SHUFFLE_SEED`` (an integer; ``reverse`` reverses instead), to show that every test passes
in any order and needs no earlier test to have run (``tests/test_order.py``)."""

from __future__ import annotations

import os
import random


def pytest_collection_modifyitems(session, config, items) -> None:
    seed = os.environ.get("AC_SHUFFLE_SEED", "")
    if seed == "reverse":
        items.reverse()
    elif seed:
        random.Random(int(seed)).shuffle(items)


def pytest_report_header(config) -> str:
    return f"test order: shuffled (AC_SHUFFLE_SEED={os.environ.get('AC_SHUFFLE_SEED', '')!r})"
