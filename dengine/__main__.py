"""python -m dengine: the dengine command."""

import sys

from dengine.cli import main

sys.exit(main())
