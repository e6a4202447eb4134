"""``python -m ac_bench.analytic``: the command line is ``ac_bench.cli.analytic``."""

import sys

from ac_bench.cli.analytic import main

sys.exit(main())
