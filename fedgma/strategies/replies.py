"""Screening of client train replies before anything is aggregated.

A reply is *failed* when Flower reports an error for it (the client crashed,
timed out or was lost) and *rejected* when it arrived but cannot be trusted: an
array missing, of another shape or not finite (NaN/Inf), or no usable
``num-examples``. Both are counted in the round's metrics and left out, so one bad
client can neither crash the ServerApp nor corrupt the global model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import Message
from flwr.common.logger import log

from ..records import decode

NUM_EXAMPLES = "num-examples"
WEIGHTS = "arrays"  # Flower's default ArrayRecord key for model weights
GRADIENT = "gradient"  # the extra ArrayRecord FedGMA asks clients for


@dataclass
class AcceptedReply:
    """A reply that passed screening, with its arrays already decoded once."""

    message: Message
    arrays: dict[str, dict[str, np.ndarray]]  # ArrayRecord key -> layer name -> array
    num_examples: float


@dataclass
class ScreenedReplies:
    accepted: list[AcceptedReply] = field(default_factory=list)
    failed: int = 0
    rejected: int = 0

    def counts(self) -> dict[str, int]:
        return {"replies-accepted": len(self.accepted), "replies-failed": self.failed,
                "replies-rejected": self.rejected}


def screen_train_replies(replies: Iterable[Message], reference: dict[str, np.ndarray],
                         records: tuple[str, ...] = (WEIGHTS,)) -> ScreenedReplies:
    """Split train replies into accepted, failed and rejected ones.

    An accepted reply holds exactly the ArrayRecords named in ``records``, each
    with the layer names and shapes of ``reference`` (the global model sent this
    round) and only finite values, and one MetricRecord with ``num-examples`` > 0.
    """
    screened = ScreenedReplies()
    for message in replies:
        if message.has_error():
            screened.failed += 1
            log(WARNING, "Client node %s failed this round: %s", message.metadata.src_node_id,
                message.error.reason)
            continue
        try:
            screened.accepted.append(_accept(message, reference, records))
        except ValueError as problem:
            screened.rejected += 1
            log(WARNING, "Rejected the reply of client node %s: %s", message.metadata.src_node_id, problem)
    return screened


def _accept(message: Message, reference: dict[str, np.ndarray], records: tuple[str, ...]) -> AcceptedReply:
    content = message.content
    if sorted(content.array_records) != sorted(records):
        raise ValueError(f"it holds ArrayRecords {sorted(content.array_records)}, expected {sorted(records)}")
    arrays = {}
    for key, record in content.array_records.items():
        if list(record.keys()) != list(reference):
            raise ValueError(f"ArrayRecord '{key}' has layers {list(record.keys())}, expected {list(reference)}")
        decoded = decode(record)
        for name, array in decoded.items():
            if array.shape != reference[name].shape:
                raise ValueError(f"'{key}/{name}' has shape {array.shape}, expected {reference[name].shape}")
            if not np.isfinite(array).all():
                raise ValueError(f"'{key}/{name}' contains NaN or Inf")
        arrays[key] = decoded
    if len(content.metric_records) != 1:
        raise ValueError(f"expected one MetricRecord, got {len(content.metric_records)}")
    metrics = next(iter(content.metric_records.values()))
    num_examples = metrics.get(NUM_EXAMPLES)
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, float)) or not num_examples > 0:
        raise ValueError(f"'{NUM_EXAMPLES}' must be a positive number, got {num_examples!r}")
    return AcceptedReply(message, arrays, float(num_examples))
