"""numpyapp: a Flower / NumPy ClientApp (Message API)."""

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from numpyapp.task import load_data, loss_and_gradient

app = ClientApp()


def record(arrays):
    return ArrayRecord({name: Array(array) for name, array in arrays.items()})


@app.train()
def train(msg: Message, context: Context):
    model = {name: array.numpy() for name, array in msg.content["arrays"].items()}
    x, y = load_data(context.node_config["partition-id"])
    for _ in range(context.run_config["local-steps"]):
        loss, gradient = loss_and_gradient(model, x, y)
        model = {name: model[name] - msg.content["config"]["lr"] * gradient[name] for name in model}
    content = RecordDict({"arrays": record(model),
                          "metrics": MetricRecord({"train_loss": float(loss), "num-examples": len(y)})})
    if msg.content["config"].get("send-gradient", False):  # FedGMA's gradient direction asks for it
        content["gradient"] = record(gradient)
    return Message(content=content, reply_to=msg)
