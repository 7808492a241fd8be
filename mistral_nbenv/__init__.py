"""mistral_nbenv: the Mistral AI API across development, staging and production."""

from __future__ import annotations

__version__ = "0.1.0"
