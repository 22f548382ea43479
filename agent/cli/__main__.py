"""``python -m agent.cli``: the same as the ``infermeter`` command."""

from __future__ import annotations

import sys

from agent.cli import main

sys.exit(main())
