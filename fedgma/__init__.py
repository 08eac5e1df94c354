"""FedGMA on Flower, in three layers (each may import the ones above it, never those below):

1. **the library**, :mod:`fedgma.strategies`: FedGMA, GMA, ReplyGuard, the masking math, the message
   protocol and the NumPyClient adapter. Flower and NumPy only; ``from fedgma import FedGMA, GMA`` loads
   nothing else (a test keeps it so).
2. **the colored-MNIST app**, the modules at this package's top level and :mod:`fedgma.data`,
   :mod:`fedgma.legacy`: ``client_app``, ``server_app``, settings, data, model, training, outputs,
   checkpoints; torch and torchvision.
3. **the tooling**, :mod:`fedgma.tools`: experiments, benchmarks, deployment, the local Flower helpers.

The library's names are re-exported here lazily (PEP 562), so importing the app or the tooling does not
import anything it does not use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["FedGMA", "GMA", "ReplyBounds", "ReplyGuard", "clientapp_from_numpy_client"]

if TYPE_CHECKING:
    from .strategies import FedGMA, GMA, ReplyBounds, ReplyGuard, clientapp_from_numpy_client


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import strategies

    return getattr(strategies, name)
