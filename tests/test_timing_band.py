"""The CPU time-ratio gate's verdict (``ac_bench.probes.timing.band_reached``): held to the band
on a quiet machine, to what its own rounds can tell on a loaded one, never passing a step whose
every round is outside."""

from ac_bench.probes.timing import band_reached

BAND = (-0.043, 0.105)  # full-eager's at `small` (bench/test_speed.py)


def test_quiet_rounds_outside_the_band_fail():
    assert not band_reached(0.20, [0.19, 0.20, 0.21, 0.20, 0.22], BAND)


def test_loaded_rounds_that_reach_the_band_pass():
    # Medians off by +15% under load, one round of five inside.
    assert band_reached(0.15, [0.31, 0.15, 0.09, -0.12, 0.22], BAND)


def test_loaded_rounds_all_outside_fail():
    # A real regression (+40% over the FLOPs) stays outside the band however the rounds spread.
    assert not band_reached(0.40, [0.31, 0.52, 0.44, 0.36, 0.29], BAND)


def test_the_median_alone_inside_passes():
    assert band_reached(0.05, [0.11, -0.05, 0.12, 0.2, -0.1], BAND)
