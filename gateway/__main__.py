"""`python -m gateway` runs the `pgw` command line."""

import sys

from gateway.cli import main

sys.exit(main())
