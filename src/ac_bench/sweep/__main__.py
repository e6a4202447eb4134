"""``python -m ac_bench.sweep``: the command line is ``ac_bench.cli.sweep``."""

import sys

from ac_bench.cli.sweep import main

sys.exit(main())
