"""``python -m vpartcollect``."""

import sys

from vpartcollect.cli import main

sys.exit(main())
