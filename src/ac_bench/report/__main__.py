"""``python -m ac_bench.report``: the command line is ``ac_bench.cli.report``."""

import sys

from ac_bench.cli.report import main

sys.exit(main())
