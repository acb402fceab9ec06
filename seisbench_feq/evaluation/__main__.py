"""``python -m seisbench_feq.evaluation ARGS`` = ``seisbench-feq evaluate ARGS``."""

import sys

from ..cli import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
