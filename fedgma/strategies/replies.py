"""Screening of client replies before anything is aggregated.

A reply is *failed* when Flower reports an error for it (the client crashed,
timed out or was lost) and *rejected* when it arrived but cannot be trusted: an
array missing, extra, misnamed, of another shape or dtype (a float64 or float16
array would silently change the model's precision), not finite (NaN/Inf), metrics
that are not finite numbers or whose names differ from the other replies' (Flower's
FedAvg refuses to average such a set), or no usable ``num-examples``. Both are
counted in the round's metrics with their reasons and left out, so one bad client
can neither crash the ServerApp nor corrupt the global model.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import Message
from flwr.common.logger import log

from .protocol import CLIENT, GRADIENT, NUM_EXAMPLES, PARTITION_ID
from .records import decode

#: Bounds on what one client can make the server record: a reason is cut to MAX_REASON characters; a reply
#: with more than MAX_METRICS metrics, or a metric name longer than MAX_METRIC_NAME, is rejected. Without
#: them one reply with 20,000 metric names wrote a 220 KB reason into metrics.json and the checkpoint.
MAX_REASON, MAX_METRICS, MAX_METRIC_NAME = 300, 64, 64


@dataclass
class AcceptedReply:
    """A reply that passed screening, with its arrays already decoded once."""

    message: Message
    arrays: dict[str, dict[str, np.ndarray]]  # ArrayRecord key -> layer name -> array
    num_examples: float  # the reply's weight (its ``weighted_by_key`` metric)

    @property
    def weights_key(self) -> str:
        """The key of the ArrayRecord holding the client's weights (whatever the app calls it)."""
        return next(key for key in self.arrays if key != GRADIENT)

    @property
    def weights(self) -> dict[str, np.ndarray]:
        return self.arrays[self.weights_key]


@dataclass
class ScreenedReplies:
    accepted: list[AcceptedReply] = field(default_factory=list)
    failed: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)  # one line per failed or rejected reply
    folded: int = 0  # accepted replies already folded into running sums and dropped (:mod:`.folding`)

    @property
    def num_accepted(self) -> int:
        return len(self.accepted) + self.folded

    def counts(self, prefix: str = "replies") -> dict[str, int]:
        return {f"{prefix}-accepted": self.num_accepted, f"{prefix}-failed": self.failed,
                f"{prefix}-rejected": self.rejected}

    def fail(self, reason: str) -> None:
        self.failed += 1
        self._note(reason)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self._note(reason)

    def _note(self, reason: str) -> None:
        reason = bounded(reason)
        self.reasons.append(reason)
        log(WARNING, "%s", reason)


def bounded(text: str, limit: int = MAX_REASON) -> str:
    """``text`` cut to ``limit`` characters, saying how many were cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters cut)"


def screen_replies(replies: Iterable[Message], reference: dict[str, np.ndarray] | None, gradient: bool = False,
                   label: Callable[[Message], str] | None = None, weighted_by_key: str = NUM_EXAMPLES,
                   exact_dtypes: bool = True) -> ScreenedReplies:
    """Split replies into accepted, failed and rejected ones.

    Train replies (``reference`` = the global model sent this round) must hold
    one ArrayRecord of weights under any key (apps name it as they like), plus a
    ``gradient`` ArrayRecord when ``gradient`` is true (FedGMA's gradient
    direction), each with the layer names, shapes and dtypes of ``reference`` and
    only finite values. Evaluate replies (``reference=None``) must hold no
    ArrayRecord. Both must hold one MetricRecord of finite numbers with
    ``weighted_by_key`` > 0, whose names match those of most other replies.
    ``label`` names a client in the reasons (default: by node id). ``exact_dtypes=False`` accepts any
    numeric dtype, as Flower's strategies do (FedAdam sends float64 arrays back to a float32 model).
    """
    label = label or default_label
    screened = ScreenedReplies()
    candidates = [candidate for message in replies if (candidate := screen_one(
        message, screened, reference, gradient, label, weighted_by_key, exact_dtypes)) is not None]
    usual = Counter(metric_names(c.message) for c in candidates).most_common(1)
    for candidate in candidates:
        names = metric_names(candidate.message)
        if names != usual[0][0]:
            screened.reject(names_differ(label(candidate.message), names, usual[0][0]))
        else:
            screened.accepted.append(candidate)
    return screened


def default_label(message: Message) -> str:
    return f"client node {message.metadata.src_node_id}"


def screen_one(message: Message, screened: ScreenedReplies, reference: dict[str, np.ndarray] | None,
               gradient: bool = False, label: Callable[[Message], str] = default_label,
               weighted_by_key: str = NUM_EXAMPLES, exact_dtypes: bool = True) -> AcceptedReply | None:
    """One reply checked on its own (see :func:`screen_replies`): counted in ``screened`` as failed or rejected
    (None), or returned; its metric names are still to be compared with the other replies'."""
    if message.has_error():
        screened.fail(f"{label(message)} failed: {short_reason(message.error.reason)}")
        return None
    try:
        return _accept(message, reference, gradient, weighted_by_key, exact_dtypes)
    except ValueError as problem:
        screened.reject(f"{label(message)} rejected: {problem}")
        return None


def names_differ(client: str, names: frozenset[str], usual: frozenset[str]) -> str:
    """The reason a reply whose metric names differ from most replies' is rejected."""
    return f"{client} rejected: metrics {sorted(names)} differ from the other replies' {sorted(usual)}"


def short_reason(text: str, limit: int = 300) -> str:
    """The last line of an error reason (a whole Ray traceback, with colour codes, otherwise)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text or "").splitlines() if line.strip()]
    last = lines[-1].rstrip("'>") if lines else "no reason given"
    return last if len(last) <= limit else last[:limit] + "..."


def metric_names(message: Message) -> frozenset[str]:
    return frozenset(next(iter(message.content.metric_records.values())).keys())


def _accept(message: Message, reference: dict[str, np.ndarray] | None, gradient: bool, weighted_by_key: str,
            exact_dtypes: bool) -> AcceptedReply:
    content = message.content
    _check_record_keys(sorted(content.array_records), reference is not None, gradient)
    arrays = {}
    for key, record in content.array_records.items():
        if list(record.keys()) != list(reference):
            raise ValueError(f"ArrayRecord '{key}' has layers {list(record.keys())}, expected {list(reference)}")
        arrays[key] = check_arrays(key, decode(record), reference, exact_dtypes)
    if len(content.metric_records) != 1:
        raise ValueError(f"expected one MetricRecord, got {len(content.metric_records)}")
    metrics = next(iter(content.metric_records.values()))
    num_examples = check_num_examples(metrics.get(weighted_by_key), weighted_by_key)
    check_metrics(metrics)
    return AcceptedReply(message, arrays, num_examples)


def _check_record_keys(keys: list[str], train: bool, gradient: bool) -> None:
    """ValueError unless the reply holds the ArrayRecords its phase needs: none (evaluate), or one of weights
    under any key plus, for FedGMA's gradient direction, ``gradient``."""
    if not train:
        if keys:
            raise ValueError(f"an evaluate reply holds ArrayRecords {keys}, expected none")
        return
    if gradient and GRADIENT not in keys:
        raise ValueError(f"it holds ArrayRecords {keys} but no '{GRADIENT}': FedGMA's direction='gradient' needs "
                         f"the client's last local gradient in an ArrayRecord '{GRADIENT}' (the train config asks "
                         "for it with 'send-gradient'); send it, or use direction='pseudo-gradient', which needs "
                         "only the weights")
    if len([key for key in keys if key != GRADIENT]) != 1 or (GRADIENT in keys and not gradient):
        raise ValueError(f"it holds ArrayRecords {keys}, expected one of weights"
                         + (f" and '{GRADIENT}'" if gradient else f" (no '{GRADIENT}': none was asked for)"))


def check_metrics(metrics: Mapping[str, object]) -> None:
    """ValueError unless the metrics are few, briefly named, and every number among them is finite (the legacy
    API also allows text and bytes, which pass)."""
    if len(metrics) > MAX_METRICS or any(len(name) > MAX_METRIC_NAME for name in metrics):
        raise ValueError(f"it reports {len(metrics)} metrics, names up to {max(map(len, metrics))} characters; "
                         f"at most {MAX_METRICS} metrics with names of at most {MAX_METRIC_NAME} are recorded")
    for name, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) for v in values if isinstance(v, (int, float))):
            raise ValueError(f"metric '{name}' is not finite: {value!r}")


def check_arrays(key: str, arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                 exact_dtypes: bool = True) -> dict[str, np.ndarray]:
    """``arrays`` if every layer has the shape of ``reference``'s, its dtype (with ``exact_dtypes``; else any
    numeric one) and only finite values; else ValueError."""
    for name, array in arrays.items():
        expected = reference[name]
        if array.shape != expected.shape:
            raise ValueError(f"'{key}/{name}' has shape {array.shape}, expected {expected.shape}")
        if not np.issubdtype(array.dtype, np.number) or (exact_dtypes and array.dtype != expected.dtype):
            raise ValueError(f"'{key}/{name}' has dtype {array.dtype}, expected {expected.dtype}")
        if not np.isfinite(array).all():
            raise ValueError(f"'{key}/{name}' contains NaN or Inf")
    return arrays


def check_num_examples(value: object, key: str = NUM_EXAMPLES) -> float:
    """A usable weight (a positive finite number, the ``key`` metric) as float; else ValueError."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not value > 0):
        raise ValueError(f"'{key}' must be a positive finite number, got {value!r}")
    return float(value)


def reported_partition(message: Message) -> int | None:
    """The partition id our ClientApp reports in its ``client`` ConfigRecord (None if absent)."""
    if message.has_error() or CLIENT not in message.content.config_records:
        return None
    value = message.content.config_records[CLIENT].get(PARTITION_ID)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


#: What a legacy ``ClientApp(client_fn=...)`` answers to a Message-API train or evaluate message.
LEGACY_CLIENT_SIGNS = ("fitins.parameters", "evaluateins.parameters")


def diagnose_api_mismatch(screened: ScreenedReplies) -> str | None:
    """The likely cause and fix when every reply failed because the client speaks the legacy API."""
    if screened.accepted or not screened.failed or not any(
            sign in reason for reason in screened.reasons for sign in LEGACY_CLIENT_SIGNS):
        return None
    return ("every client failed with KeyError 'fitins.parameters': the ClientApp is a legacy "
            "ClientApp(client_fn=...) serving a NumPyClient, which cannot answer this Message-API strategy. "
            "Build it with `app = fedgma.clientapp_from_numpy_client(client_fn)` instead of "
            "`ClientApp(client_fn=client_fn)`.")

