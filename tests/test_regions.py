"""The checks that need no analytic model (``bench/test_regions.py``) catch what they are for, each
in one failure naming the family, the variant and the regions."""

from __future__ import annotations

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
