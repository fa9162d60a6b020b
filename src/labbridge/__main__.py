"""``python -m labbridge`` runs the command line."""

import sys

from labbridge.cli import main

sys.exit(main())
