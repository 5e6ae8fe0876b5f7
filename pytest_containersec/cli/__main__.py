"""``python -m pytest_containersec.cli``."""

import sys

from .cli import main

sys.exit(main())
