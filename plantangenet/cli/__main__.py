"""``python -m plantangenet.cli``, as ``python -m plantangenet``."""

import sys

from plantangenet.cli import main

sys.exit(main())
