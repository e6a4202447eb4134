"""The report users read: per flavor and device, each variant's step time, memory and
recompute cost with the Pareto frontier marked, as text, Markdown and a PNG plot.

    python -m ac_bench.report table RUN.json [AFTER.json ...] [--markdown FILE] [--plot FILE] [--flavor ...]

Input files are written by ``pytest bench/ --benchmark-json FILE``: their ``measurements``
are ``ac_bench.record.Measurement`` records; the benchmarks that timed a step add its time.

One module per job: ``load`` (files into records and timings), ``frontier`` (ratios to
``none``, the Pareto frontier, moves between runs), ``tables`` (text and Markdown, the
sweep's tables too), ``plots`` (matplotlib figures). The command lines are ``ac_bench.cli.report`` and
``ac_bench.cli.sweep`` (``python -m ac_bench.sweep``); this package imports neither.
"""
