"""`make run`: `python -m stack` serves through nginx until Ctrl-C."""

import sys

from stack.launcher import main

sys.exit(main())
