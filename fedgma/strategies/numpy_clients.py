"""Serve this project's Message-API strategies with any Flower ``NumPyClient``.

Most Flower code trains with a ``NumPyClient`` (``get_parameters`` / ``fit`` /
``evaluate``). Flower's legacy ``ClientApp(client_fn=...)`` cannot answer a
Message-API strategy (every reply fails with ``KeyError: 'fitins.parameters'``),
so this module drives the NumPyClient from ``@app.train`` / ``@app.evaluate``
handlers and packs what it returns as Message-API records::

    from fedgma import clientapp_from_numpy_client

    def client_fn(context):            # your existing function
        return MyNumPyClient(...)

    app = clientapp_from_numpy_client(client_fn)   # instead of ClientApp(client_fn=client_fn)

``client_fn`` may return the NumPyClient itself or, as Flower's tutorials do,
``NumPyClient(...).to_client()``. The weights arrive in the message's one
ArrayRecord and the config in its one ConfigRecord, whatever keys the server's
strategy uses (``arrayrecord_key``, ``configrecord_key``). Per reply: the weights
under the key they came in (the layer names the server sent, in its order), a
``metrics`` MetricRecord (``num-examples`` plus the client's numeric metrics),
and, when the node config has ``partition-id``, a ``client`` ConfigRecord that
lets the server aggregate in a fixed order. FedGMA's gradient direction also needs
the client's last local gradient: a ``last_gradient`` attribute (a list of arrays
in ``get_parameters`` order) set by ``fit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from .protocol import CLIENT, GRADIENT, METRICS, NUM_EXAMPLES, PARTITION_ID, SEND_GRADIENT

ClientFn = Callable[[Context], NumPyClient | Client]


class NumPyClientAdapter:
    """Message-API handlers that drive the NumPyClient ``client_fn(context)`` returns."""

    def __init__(self, client_fn: ClientFn) -> None:
        self.client_fn = client_fn

    def app(self, train_mods: list | None = None) -> ClientApp:
        """A ``ClientApp`` with this adapter's train, evaluate and query handlers (``train_mods``: Flower mods
        around the train handler only, e.g. local differential privacy)."""
        app = ClientApp()
        app.train(mods=train_mods or [])(self.train)
        app.evaluate()(self.evaluate)
        app.query()(self.query)
        return app

    def train(self, msg: Message, context: Context) -> Message:
        client = self._client(context)
        key, (names, parameters) = _weights(msg)
        config = _plain_config(msg)
        weights, num_examples, metrics = _check_triple(client.fit(parameters, config), client, "fit")
        content = RecordDict({key: _pack(names, weights, client, "fit"),
                              METRICS: _metric_record(num_examples, metrics, client)})
        if config.get(SEND_GRADIENT, False):
            gradient = getattr(client, "last_gradient", None)
            if gradient is None:
                raise ValueError(f"FedGMA with fedgma-direction='gradient' needs the last local gradient, but "
                                 f"{type(client).__name__} has no 'last_gradient' attribute: set "
                                 f"self.last_gradient (a list of arrays in get_parameters order) in fit, or run "
                                 f"with fedgma-direction='pseudo-gradient', which needs nothing from the client.")
            content[GRADIENT] = _pack(names, gradient, client, "last_gradient")
        return self._reply(msg, content, context)

    def evaluate(self, msg: Message, context: Context) -> Message:
        client = self._client(context)
        _, (_, parameters) = _weights(msg)
        loss, num_examples, metrics = _check_triple(client.evaluate(parameters, _plain_config(msg)), client,
                                                    "evaluate")
        record = _metric_record(num_examples, {"local-loss": loss} | dict(metrics), client)
        return self._reply(msg, RecordDict({METRICS: record}), context)

    def query(self, msg: Message, context: Context) -> Message:
        """The node's partition id, asked once by the server when it samples clients."""
        return self._reply(msg, RecordDict(), context)

    def _client(self, context: Context) -> NumPyClient:
        client = self.client_fn(context)
        if isinstance(client, Client) and isinstance(getattr(client, "numpy_client", None), NumPyClient):
            client = client.numpy_client  # NumPyClient(...).to_client(), as Flower's tutorials end client_fn
        if not isinstance(client, NumPyClient):
            raise TypeError(f"client_fn must return a flwr.client.NumPyClient (or its .to_client()), got "
                            f"{type(client).__name__}")
        return client

    @staticmethod
    def _reply(msg: Message, content: RecordDict, context: Context) -> Message:
        partition = context.node_config.get(PARTITION_ID)
        if isinstance(partition, int) and not isinstance(partition, bool):
            content[CLIENT] = ConfigRecord({PARTITION_ID: partition})
        return Message(content=content, reply_to=msg)


def clientapp_from_numpy_client(client_fn: ClientFn) -> ClientApp:
    """A ``ClientApp`` that serves this project's strategies with your ``client_fn(context) -> NumPyClient``."""
    return NumPyClientAdapter(client_fn).app()


def _weights(msg: Message) -> tuple[str, tuple[list[str], list[np.ndarray]]]:
    """The key of the message's one ArrayRecord, its layer names and writable arrays (a client may change them
    in place)."""
    records = msg.content.array_records
    if len(records) != 1:
        raise ValueError(f"the server sent ArrayRecords {sorted(records)}; a NumPyClient takes exactly one")
    key, record = next(iter(records.items()))
    return key, (list(record.keys()), [array.numpy() for array in record.values()])


def _plain_config(msg: Message) -> dict[str, Any]:
    """The message's one ConfigRecord (whatever its key; the server's ``client`` record aside) as a dict, or {}."""
    records = [record for key, record in msg.content.config_records.items() if key != CLIENT]
    if len(records) > 1:
        raise ValueError(f"the server sent {len(records)} ConfigRecords; a NumPyClient takes one config")
    return dict(records[0]) if records else {}


def _check_triple(result: Any, client: NumPyClient, method: str) -> tuple:
    if not isinstance(result, tuple) or len(result) != 3:
        raise TypeError(f"{type(client).__name__}.{method} must return a tuple of three (see flwr.client.NumPyClient), "
                        f"got {type(result).__name__}")
    return result


def _pack(names: list[str], arrays: list[np.ndarray], client: NumPyClient, what: str) -> ArrayRecord:
    arrays = list(arrays)
    if len(arrays) != len(names):
        raise ValueError(f"{type(client).__name__}.{what} gave {len(arrays)} arrays; the server sent {len(names)} "
                         f"({', '.join(names)})")
    return ArrayRecord({name: Array(np.ascontiguousarray(array)) for name, array in zip(names, arrays)})


def _metric_record(num_examples: Any, metrics: dict[str, Any], client: NumPyClient) -> MetricRecord:
    """``num-examples`` plus the numeric metrics; others (text, bytes) cannot travel in a MetricRecord."""
    numeric = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numeric[key] = value
        else:
            log(WARNING, "%s: metric '%s' (%s) is not a number and is not sent.", type(client).__name__, key,
                type(value).__name__)
    if isinstance(num_examples, float) and math.isfinite(num_examples) and num_examples.is_integer():
        num_examples = int(num_examples)
    return MetricRecord(numeric | {NUM_EXAMPLES: num_examples})
