"""The checks that need no analytic model (``bench/test_regions.py``) catch what they are for, each
in one failure naming the family, the variant and the regions; the per-region figures
(``ac_bench.regions``) compose whole layers too, and refuse in one line what they cannot compose."""

from __future__ import annotations

import re

import pytest

from ac_bench.models import FLAVORS
from ac_bench.record import measure_variant
from ac_bench.regions import measure_regions
from tests.helpers import run_pytest


def _failures(result) -> list[str]:
    return sorted(line.split("::")[1].split(" ")[0] for line in result.stdout.splitlines() if line.startswith("FAILED"))


def test_recompute_beyond_the_last_save_is_caught():
    """With checkpointing's early stop off, each region recomputes its whole forward (here the
    out_proj and fc2 matmuls too): the FLOP check fails, the memory check does not."""
    args = ["bench/test_regions.py", "--device", "cpu", "--flavor", "tiny", "-q", "-k", "full-sdpa and not planner"]
    assert run_pytest(*args).returncode == 0
    broken = run_pytest(*args, "-p", "tests.plugins.no_early_stop")
    out = broken.stdout
    assert broken.returncode == 1, out + broken.stderr
    assert _failures(broken) == ["test_recompute_flops_are_the_checkpointed_regions_forwards[cpu-tiny-full-sdpa]"], out
    assert "family transformer, tiny full-sdpa: recomputes" in out and "block 1 attn: keeps" in out, out


def test_undeclared_keyword_inputs_are_caught():
    """A family whose blocks pass the MLP its input as a keyword argument, declaring no
    ``saved_bytes_gap``: its checkpointed MLPs hold their inputs out of hooks' sight, so
    ``saved_bytes`` is below ``forward_kept_bytes``; the check names the family and the bytes."""
    result = run_pytest("bench/test_regions.py", "--device", "cpu", "--model-spec", "tests.families:KEYWORD", "-q",
                        "-k", "mlp-sdpa and kept_bytes")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert _failures(result) == ["test_kept_bytes_are_none_less_the_regions_plus_their_inputs[cpu-kw-gpt-tiny-mlp-sdpa]"]
    assert "but family 'kw-gpt' declares no saved_bytes_gap" in out and "block 1 mlp: keeps" in out, out


def test_whole_layers_compose_on_the_notebooks_block():
    """``whole_layers`` (not among the notebook family's default variants) composes from the
    layers' figures like the sublayer policies: kept bytes and recomputed FLOPs exactly."""
    flavor = FLAVORS["tiny"]
    profile = measure_regions(flavor, "sdpa")
    none, layers = (measure_variant(flavor, f"{p}-sdpa", "cpu") for p in ("none", "whole_layers"))
    assert (layers.forward_kept_bytes, layers.saved_bytes, layers.flops - none.flops) == (
        profile.kept_bytes("whole_layers"), profile.kept_bytes("whole_layers", held=False),
        profile.recompute_flops("whole_layers")), profile.describe("whole_layers")


@pytest.mark.parametrize(("regions", "message"), [
    ("sac", "policy 'sac' (selective) does not checkpoint whole regions"),
    ({(7, "attn")}, "measured region figures have no block 7 attn (they describe 9 regions of 3 blocks)"),
    ({(1, "layer"), (1, "attn")}, "block 1 attn inside a checkpointed layer: nested checkpoints do not compose"),
])
def test_regions_that_do_not_compose_are_one_line(regions, message):
    profile = measure_regions(FLAVORS["tiny"], "sdpa")
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        profile.kept_bytes(regions)
    assert "\n" not in str(info.value)
