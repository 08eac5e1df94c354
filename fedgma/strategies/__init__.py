"""Server strategies: the masking math, FedGMA, the GMA wrapper and the registry."""

from .fedgma import FedGMA
from .gma import GMA
from .guard import ReplyGuard
from .registry import build_strategy

__all__ = ["FedGMA", "GMA", "ReplyGuard", "build_strategy"]
