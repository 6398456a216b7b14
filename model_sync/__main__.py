"""``python -m model_sync``: the same as ``ctr-sync``."""

import sys

from scoring.sync.cli import main

sys.exit(main())
