"""``python -m torchdetr …`` is the ``detr`` command."""

import sys

from .cli import main

sys.exit(main())
