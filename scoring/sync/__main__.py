"""``python -m scoring.sync``: the same as ``ctr-sync``."""

import sys

from .cli import main

sys.exit(main())
