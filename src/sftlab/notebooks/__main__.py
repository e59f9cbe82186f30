"""`python -m sftlab.notebooks CMD ...` is `sftlab notebooks CMD ...` (for a kernel without the entry point)."""

import sys

from ..cli import main

sys.exit(main(["notebooks", *sys.argv[1:]]))
