"""The message protocol: every record key and config name that clients and the server exchange.

Both sides import their names from here and from nowhere else (this module
imports nothing of the project), so a client learns a key name without loading a
server strategy, and a renamed key cannot drift between the two sides.

A train reply's ``RecordDict`` holds:

* one ArrayRecord of the client's weights, under the key the server's strategy
  sent them in (Flower's default ``arrays``), with the layer names, order, shapes
  and dtypes of the global model the server sent;
* ``GRADIENT`` (ArrayRecord), only when the train config has ``SEND_GRADIENT``
  true (FedGMA's gradient direction): the client's last local gradient, same layers;
* one MetricRecord (``METRICS``) with ``NUM_EXAMPLES`` > 0 and the client's
  numeric metrics;
* optionally ``CLIENT`` (ConfigRecord) with ``PARTITION_ID``: which data partition
  the client holds, so the server can aggregate and sample in a fixed order.

Evaluate replies hold the MetricRecord (and ``CLIENT``) only. A QUERY message
whose ``CLIENT`` record has ``ASK`` = ``PARTITION_ID`` asks a client for its
partition id; the reply is an empty ``RecordDict`` plus ``CLIENT``.
"""

from __future__ import annotations

import copy

from flwr.app import Message, RecordDict

GRADIENT = "gradient"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
CLIENT = "client"
PARTITION_ID = "partition-id"
ASK = "ask"

#: Train-config flag: the server wants the client's last local gradient in ``GRADIENT``.
SEND_GRADIENT = "send-gradient"
#: The legacy API's counterpart: the client appends its last local gradient to its weights.
APPEND_GRADIENT = "append-gradient"

#: Secure aggregation (legacy API, Flower's SecAgg+): the client appends the signs of its "update"
#: (w_k - w_t) or of its last local "gradient" after everything else it returns, so the securely summed
#: reply carries the sign sums the masks need (:mod:`fedgma.strategies.secagg`).
APPEND_SIGNS = "append-signs"
#: With it true, the client scales its signs by SECAGG_MAX_WEIGHT / num_examples, so that SecAgg+'s
#: example weighting cancels and the server can count them per client (the papers' unweighted agreement).
UNIFORM_SIGNS = "uniform-signs"
#: The SecAgg+ settings the client checks its reply against (a value that SecAgg+ would clip is refused).
SECAGG_MAX_WEIGHT = "secagg-max-weight"
SECAGG_CLIPPING_RANGE = "secagg-clipping-range"

#: Train-config names that Flower's own strategies send (FedAvg: the round; FedProx: its mu).
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"


def with_content(message: Message, content: RecordDict) -> Message:
    """A copy of ``message`` (same metadata) with ``content``.

    The strategies never edit a reply they received (a wrapper further out, or
    the caller's own bookkeeping, may still read it); they hand on copies.
    """
    changed = copy.copy(message)
    changed.content = content
    return changed


def with_records(message: Message, changes: dict) -> Message:
    """A copy of ``message`` whose content has the records in ``changes`` added or replaced."""
    return with_content(message, RecordDict(dict(message.content) | changes))
