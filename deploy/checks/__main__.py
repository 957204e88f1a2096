"""``python -m deploy.checks``: every offline check of deploy/ (what ``make deploy-check`` runs)."""

import sys

from deploy.checks.run import main

sys.exit(main())
