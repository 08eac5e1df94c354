"""Gradient masking under Flower's secure aggregation (SecAgg+), which Flower offers on its legacy API only.

Both masks are one array shared by all clients, so the server needs only sums:
the example-weighted mean of the weights (of the last gradients, for FedGMA's
gradient direction) and, per coordinate, the sum of the clients' signs. Each
client therefore appends the signs of its update (or of its gradient) to what it
returns, and Flower's SecAgg+ sums everything; the server never sees one
client's arrays, only these sums.

What SecAgg+ computes (Flower 1.39 to 1.42, ``flwr.client.mod.secaggplus_mod`` and
``flwr.server.workflow.SecAggPlusWorkflow``; measured in docs/secagg/findings.md):
client k multiplies every array it returns by r_k = n_k / max_weight, clips the
result to [-c, c] (c the clipping range) and rounds it stochastically to one of T
levels (the quantization range); the server unmasks the sum and hands the legacy
strategy sum_k r_k x_k / sum_k r_k for every array, as float64, in every one of
the round's FitRes (each keeps its client's own num_examples and metrics, which
SecAgg+ does not hide). Per entry the result is off by less than
K 2c max_weight / (T sum_k n_k) (:meth:`SecAggPlus.error_bound`), provided nothing
was clipped, which the client checks before it sends (:func:`check_within_clipping`).

The papers count signs per client (agreement |sum_k sign(u_k)| / K). SecAgg+
weights every array by n_k, so for that count each client sends its signs times
max_weight / n_k: the weighting cancels, the server multiplies the mean back by
sum_k n_k / max_weight and rounds to whole counts, and the agreement is exact.
With ``agreement-weighting = 'examples'`` the signs go unscaled and the agreement
is the weighted mean sign itself, within the error bound above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import MessageType, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.workflow import SecAggPlusWorkflow

from .protocol import APPEND_SIGNS, SECAGG_CLIPPING_RANGE, SECAGG_MAX_WEIGHT, UNIFORM_SIGNS

#: What a client can append the signs of: its update w_k - w_t, or its last local gradient.
SIGN_SOURCES = ("update", "gradient")


@dataclass(frozen=True)
class SecAggPlus:
    """The SecAgg+ settings of a run: the workflow, what the clients are told, and what to expect back.

    ``max_weight`` should be near the largest num_examples a client reports: the error grows in proportion
    to it, and a client with more examples is refused unless its values still fit the clipping range.
    """

    max_weight: float
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    num_shares: int = 3
    reconstruction_threshold: int = 2
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not (self.max_weight > 0 and self.clipping_range > 0 and self.quantization_range > 1):
            raise ValueError(f"SecAgg+ needs max_weight, clipping_range > 0 and quantization_range > 1, got {self}")
        if not 2 <= self.reconstruction_threshold < self.num_shares:
            raise ValueError(f"SecAgg+ needs 2 <= reconstruction_threshold < num_shares, got "
                             f"{self.reconstruction_threshold} and {self.num_shares}")

    def workflow(self) -> SecAggPlusWorkflow:
        """Flower's fit workflow with these settings (the clipping range as a float: the clients' mod refuses
        an int, and the server does not check it)."""
        return SecAggPlusWorkflow(self.num_shares, self.reconstruction_threshold, max_weight=float(self.max_weight),
                                  clipping_range=float(self.clipping_range),
                                  quantization_range=int(self.quantization_range), timeout=self.timeout)

    def fit_config(self, signs: str | None, uniform: bool) -> dict[str, bool | float | str]:
        """The train-config entries that tell a client what to append and what to check."""
        config: dict[str, bool | float | str] = {SECAGG_MAX_WEIGHT: float(self.max_weight),
                                                 SECAGG_CLIPPING_RANGE: float(self.clipping_range)}
        if signs is not None:
            config |= {APPEND_SIGNS: signs, UNIFORM_SIGNS: uniform}
        return config

    def error_bound(self, num_clients: int, total_examples: float) -> float:
        """The largest error of one entry of a securely averaged array: K quantization steps of 2c/T, at
        weight max_weight / sum_k n_k (stochastic rounding moves each client's entry by less than a step)."""
        return num_clients * 2 * self.clipping_range * self.max_weight / (self.quantization_range * total_examples)

    def agreement(self, sign_mean: np.ndarray, total_examples: float, num_clients: int,
                  uniform: bool) -> np.ndarray:
        """The sign agreement from the securely averaged sign array (see the module docstring).

        Uniform: whole per-client counts |sum_k sign_k| / K, exact; a count beyond K means the clients did not
        scale their signs as this server expects, and is refused. Weighted: |sum_k n_k sign_k| / sum_k n_k.
        """
        if not uniform:
            return np.minimum(np.abs(sign_mean, dtype=np.float64), 1.0)
        counts = np.abs(np.rint(np.asarray(sign_mean, np.float64) * (total_examples / self.max_weight)))
        if counts.size and counts.max() > num_clients:
            raise ValueError(f"the securely summed signs count up to {int(counts.max())} for {num_clients} clients: "
                             "the clients did not scale their signs by max_weight / num_examples")
        return counts / num_clients


def sign_arrays(arrays: Sequence[np.ndarray], reference: Sequence[np.ndarray] | None, num_examples: int,
                uniform_over: float | None) -> list[np.ndarray]:
    """The sign arrays a client appends: of ``arrays`` minus ``reference`` (its update) or of ``arrays`` (its
    gradient), times ``uniform_over / num_examples`` when given (so that SecAgg+'s weighting by num_examples
    cancels and the server can count signs per client)."""
    scale = 1.0 if uniform_over is None else uniform_over / num_examples
    pivots = reference if reference is not None else [0] * len(arrays)
    return [(np.sign(np.asarray(a, np.float64) - p) * scale).astype(np.float32) for a, p in zip(arrays, pivots)]


def check_within_clipping(arrays: Sequence[np.ndarray], num_examples: int, max_weight: float,
                          clipping_range: float) -> None:
    """ValueError if SecAgg+ would clip any value of this reply (it would do so silently and bias the sum):
    it clips r_k x with r_k = num_examples / max_weight to [-c, c]."""
    largest = max((float(np.max(np.abs(a))) for a in arrays if np.size(a)), default=0.0)
    if not np.isfinite(largest) or largest * num_examples / max_weight > clipping_range:
        raise ValueError(
            f"SecAgg+ would clip this reply: its largest value {largest:.4g} at weight num_examples / "
            f"secagg-max-weight = {num_examples} / {max_weight:g} exceeds secagg-clipping-range {clipping_range:g}; "
            "raise 'secagg-clipping-range' (the error grows with it) or 'secagg-max-weight'")


def secure_payload(config: dict, reference: Sequence[np.ndarray], arrays: list[np.ndarray],
                   num_examples: int) -> list[np.ndarray]:
    """What a client sends through SecAgg+ under this train ``config``: its ``arrays`` (weights, then its last
    gradient if it was asked for one) followed by the signs the config asks for; ValueError if SecAgg+ would
    clip any of it."""
    max_weight = float(config[SECAGG_MAX_WEIGHT])
    source = config.get(APPEND_SIGNS)
    if source is not None:
        if source not in SIGN_SOURCES:
            raise ValueError(f"train config '{APPEND_SIGNS}' = {source!r}; expected one of {SIGN_SOURCES}")
        count = len(reference)
        signed, pivot = (arrays[:count], reference) if source == "update" else (arrays[-count:], None)
        arrays = arrays + sign_arrays(signed, pivot, num_examples, max_weight if config.get(UNIFORM_SIGNS) else None)
    check_within_clipping(arrays, num_examples, max_weight, float(config[SECAGG_CLIPPING_RANGE]))
    return arrays


def secagg_reply_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod, inside ``secaggplus_mod``: a train reply becomes its :func:`secure_payload` when the train
    config carries SecAgg+ settings. Works for any legacy NumPyClient; FedGMA's gradient direction also needs the
    client to append its last gradient (train config ``append-gradient``), as the app's client does."""
    config = msg.content.config_records.get("fitins.config") if msg.metadata.message_type == MessageType.TRAIN else None
    if config is None or SECAGG_MAX_WEIGHT not in config:  # not a legacy train message under SecAgg+
        return call_next(msg, context)
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    fit_res.parameters = ndarrays_to_parameters(secure_payload(
        fit_ins.config, parameters_to_ndarrays(fit_ins.parameters), parameters_to_ndarrays(fit_res.parameters),
        fit_res.num_examples))
    return Message(compat.fitres_to_recorddict(fit_res, keep_input=True), reply_to=msg)


def secaggplus_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round only: the mod takes every train
    message for a protocol stage and fails a plain one, so a ClientApp with this mod serves both."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)
