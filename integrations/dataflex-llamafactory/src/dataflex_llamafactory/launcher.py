"""Entry script for torchrun: each rank runs ``dataflex-cli`` in-process."""

from __future__ import annotations

import sys

from dataflex_llamafactory.cli import main

if __name__ == "__main__":
    sys.exit(main())
