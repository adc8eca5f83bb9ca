"""``python -m databricks_bridge JOB_RESULT``: the same as ``fitfed export``."""

import sys

from databricks_bridge.cli import main

sys.exit(main())
