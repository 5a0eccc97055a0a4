"""`python -m liandan` (and `accelerate launch -m liandan`)."""

import sys

from liandan.cli import main

sys.exit(main())
