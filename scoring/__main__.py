"""``python -m scoring``: the same as ``ctr-serve``."""

import sys

from .serving.cli import serve_main

sys.exit(serve_main())
