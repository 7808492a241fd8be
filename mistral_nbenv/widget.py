"""``mistral_nbenv.widget``: the documented import path of the switcher widget (its code is
:mod:`mistral_nbenv.ui.widget`)."""

from __future__ import annotations

from mistral_nbenv.ui.widget import EnvironmentSwitcher

__all__ = ["EnvironmentSwitcher"]
