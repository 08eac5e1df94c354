"""The library: gradient-masked aggregation for any Flower app (needs Flower and NumPy only).

* :mod:`.masking`: the math, pure NumPy functions (sign agreement, masks, steps);
* :class:`FedGMA`, :class:`GMA`: the workshop and journal versions as Message-API strategies;
* :class:`ReplyGuard`: screening, fixed order, bounds, counts and resumption around any strategy;
* :mod:`.protocol`: every record key and config name clients and server exchange;
* :func:`clientapp_from_numpy_client`: the client side, serving these strategies with a ``NumPyClient``.

Names are loaded on first use (PEP 562), so a client that imports
``fedgma.strategies.protocol`` does not load the server strategies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"FedGMA": ".fedgma", "GMA": ".gma", "ReplyGuard": ".guard", "ReplyBounds": ".bounds",
            "clientapp_from_numpy_client": ".numpy_clients"}

__all__ = ["FedGMA", "GMA", "ReplyBounds", "ReplyGuard", "clientapp_from_numpy_client"]

if TYPE_CHECKING:
    from .bounds import ReplyBounds
    from .fedgma import FedGMA
    from .gma import GMA
    from .guard import ReplyGuard
    from .numpy_clients import clientapp_from_numpy_client


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
