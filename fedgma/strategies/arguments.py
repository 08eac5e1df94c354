"""Checks of the strategies' constructor arguments, with errors that name the argument."""

from __future__ import annotations

import math


def check_fraction(what: str, value: float) -> float:
    """``value`` if it lies in [0, 1]; a ValueError naming ``what`` otherwise."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must lie in [0, 1], got {value}")
    return value


def check_step(what: str, value: float) -> float:
    """``value`` if it is a finite number >= 0; a ValueError naming ``what`` otherwise."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return value


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; a ValueError naming ``what`` otherwise."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
