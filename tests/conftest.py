"""Every self-test sees the family and flavor registries as it found them: what one test
registers (``ac_bench.scale.scale_model`` imports ``ac_bench.models.hf``, which registers the
transformers families; a ``--model-spec`` run in-process registers its own) is gone after it.
Without this, a test that lists the valid flavor names failed whenever a test that registered
families had run before it in the same process (``make test`` shuffles the order)."""

from __future__ import annotations

import pytest

from tests.helpers import registries_kept


@pytest.fixture(autouse=True)
def _registries_as_found():
    with registries_kept():
        yield
