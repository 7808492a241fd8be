"""``python -m mistral_nbenv``: the ``mistral-nbenv`` command line."""

from __future__ import annotations

import sys

from mistral_nbenv.ui.cli import main

sys.exit(main())
