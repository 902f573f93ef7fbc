"""``python -m plantangenet``: the command line."""

import sys

from plantangenet.cli import main

sys.exit(main())
