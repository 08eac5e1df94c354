"""A ClientApp that misbehaves on purpose, for tests/test_fault_engine.py.

It serves this project's ClientApp handlers, then breaks some replies by
partition and round (4 partitions):

* round 1, train: partition 1 raises, partition 2 replies in float64;
* round 1, evaluate: partition 1 raises, partition 2 reports a NaN accuracy;
* round 2, train: every partition raises;
* round 3: everybody behaves.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from fedgma import client_app as ours

app = ClientApp()


def _round_and_partition(msg: Message, context: Context) -> tuple[int, int]:
    return int(msg.content["config"]["server-round"]), int(context.node_config["partition-id"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    server_round, partition = _round_and_partition(msg, context)
    if server_round == 2 or (server_round == 1 and partition == 1):
        raise RuntimeError(f"injected crash in train, partition {partition}")
    answer = ours.adapter.train(msg, context)
    if server_round == 1 and partition == 2:
        weights = answer.content["arrays"]
        answer.content["arrays"] = ArrayRecord({n: Array(a.numpy().astype("float64")) for n, a in weights.items()})
    return answer


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    server_round, partition = _round_and_partition(msg, context)
    if server_round == 1 and partition == 1:
        raise RuntimeError(f"injected crash in evaluate, partition {partition}")
    answer = ours.adapter.evaluate(msg, context)
    if server_round == 1 and partition == 2:
        metrics = dict(answer.content["metrics"]) | {"local-accuracy": float("nan")}
        answer.content["metrics"] = MetricRecord(metrics)
    return answer


app.query()(ours.adapter.query)
