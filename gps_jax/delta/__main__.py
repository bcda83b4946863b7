"""``python -m gps_jax.delta ...``: see `gps_jax.delta.cli`."""

import sys

from gps_jax.delta.cli import main

sys.exit(main())
