"""`python -m gateway` runs the `pgw` command line."""

import sys

from gateway.cli.main import main

sys.exit(main())
