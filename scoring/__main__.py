"""``python -m scoring``: the same as ``ctr-serve``."""

import sys

from .cli import serve_main

sys.exit(serve_main())
