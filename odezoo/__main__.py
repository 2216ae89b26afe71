"""``python -m odezoo``: the odezoo command line."""

import sys

from odezoo.cli import main

sys.exit(main())
