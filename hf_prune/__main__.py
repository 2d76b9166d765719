"""``python -m hf_prune`` (and ``accelerate launch -m hf_prune``) run the CLI."""

import sys

from .run.cli import main

sys.exit(main())
