"""``python -m torchdetr.cli …`` (e.g. under ``torchrun``) is the ``detr`` command."""

import sys

from . import main

sys.exit(main())
