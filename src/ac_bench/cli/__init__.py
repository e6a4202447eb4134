"""Command lines: ``python -m ac_bench.report``, ``python -m ac_bench.sweep``,
``python -m ac_bench.analytic``, ``python -m ac_bench.cli.gpu_check``; ``common`` holds the
parser that turns bad input into one line and exit status 2."""
