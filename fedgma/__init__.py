"""FedGMA on Flower: gradient-masked averaging strategies and a colored-MNIST app.

Stable public imports: the Message-API strategies ``FedGMA`` and ``GMA`` (and
``ReplyGuard``), and ``clientapp_from_numpy_client`` for serving them with an
existing ``NumPyClient``.
"""

from .adapter import clientapp_from_numpy_client
from .strategies import GMA, FedGMA, ReplyGuard

__all__ = ["FedGMA", "GMA", "ReplyGuard", "clientapp_from_numpy_client"]
