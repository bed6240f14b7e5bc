"""``python -m sandbox.host``: see :mod:`sandbox.host.cli`."""

import sys

from sandbox.host.cli import main

sys.exit(main())
