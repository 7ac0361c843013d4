"""``python -m vstmon`` is the same as the ``vstmon`` command."""

import sys

from vstmon.cli import main

sys.exit(main())
