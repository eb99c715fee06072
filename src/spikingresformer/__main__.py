"""``python -m spikingresformer`` runs the command line (also what ``torchrun -m`` starts)."""

import sys

from .cli import main

sys.exit(main())
