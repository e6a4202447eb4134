"""ac-bench: what activation checkpointing buys and costs in PyTorch training.

The library behind the ``pytest bench/`` suite, split by job:

- ``ac_bench.models``: the model families, their flavors and the checkpointing policies
  (installed from the repository's ``models/``);
- ``ac_bench.record``, ``ac_bench.cases``, ``ac_bench.gradients``: the measured step, its
  record and the parametrization; ``ac_bench.metrics``: the metric registry;
- ``ac_bench.probes``: memory, FLOPs, timing, the attention kernel and the device seam;
- ``ac_bench.gate``: baselines and timing storage;
- ``ac_bench.analytic``, ``ac_bench.planner``, ``ac_bench.sweep``, ``ac_bench.distributed``;
- ``ac_bench.report``: a reader of the JSON (tables, plots, frontier);
- ``ac_bench.cli``: the command lines; ``ac_bench.plugin``: the pytest plugin.
"""
