"""``python -m logitnorm_plugin.cli ...`` (what ``torchrun -m`` needs)."""

import sys

from logitnorm_plugin.cli import main

sys.exit(main())
