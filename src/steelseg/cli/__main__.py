"""``python -m steelseg.cli``: the same as the ``steelseg`` command."""

import sys

from steelseg.cli import main

sys.exit(main())
