"""``python -m sipswarm.protocol --schema``: print the JSON Schema of the protocol."""

from __future__ import annotations

import sys

from sipswarm.protocol.parse import main

sys.exit(main())
