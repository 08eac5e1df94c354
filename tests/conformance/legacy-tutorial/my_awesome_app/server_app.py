"""my-awesome-app: A Flower / PyTorch app."""

import json
from pathlib import Path

import torch
from typing import List, Tuple

from flwr.common import Context, Metrics, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAdam
from flwr.server.workflow import DefaultWorkflow
from torch.utils.data import DataLoader

from my_awesome_app.my_strategy import CustomFedAvg
from my_awesome_app.task import Net, get_transforms, get_weights, local_mnist, set_weights, test

from fedgma.legacy.strategies import LegacyFedGMA, LegacyGMA


def get_evaluate_fn(testloader, device):
    """Return a callback that evaluates the global model."""

    def evaluate(server_round, parameters_ndarrays, config):
        """Evaluate global model using provided centralised testset."""
        # Instantiate model
        net = Net()
        # Apply global_model parameters
        set_weights(net, parameters_ndarrays)
        net.to(device)
        # Run test
        loss, accuracy = test(net, testloader, device)

        return loss, {"cen_accuracy": accuracy}

    return evaluate


def weighted_average(metrics: List[Tuple[int, Metrics]]) -> Metrics:
    """Aggregates metrics from an evaluate round."""
    # Loop trough all metrics received compute accuracies x examples
    accuracies = [num_examples * m["accuracy"] for num_examples, m in metrics]
    total_examples = sum(num_examples for num_examples, _ in metrics)
    # Return weighted average accuracy
    return {"accuracy": sum(accuracies) / total_examples}


def handle_fit_metrics(metrics: List[Tuple[int, Metrics]]) -> Metrics:
    """Aggregate metrics from a fit round.

    This function showed a mechanism to communicate almost arbitrary metrics by
    converting them into a JSON on the ClientApp side. Here that JSON string is
    deserialized and reinterpreted as a dictionary we can use.
    """
    b_values = []
    for _, m in metrics:
        my_metric_str = m["my_metric"]
        # Deserialize JSON and return dict
        my_metric = json.loads(my_metric_str)
        b_values.append(my_metric["b"])
    # Return maximum value from deserialized metrics
    return {"max_b": max(b_values)}


def on_fit_config(server_round: int) -> Metrics:
    """Adjusts learning rate based on current round."""
    lr = 0.01
    # Appply a simple learning rate decay
    if server_round > 2:
        lr = 0.005
    return {"lr": lr}


def server_fn(context: Context):
    """A function that creates the components for a ServerApp."""
    # Read from Run config
    num_rounds = context.run_config["num-server-rounds"]
    fraction_fit = context.run_config["fraction-fit"]

    # Initialize model parameters
    ndarrays = get_weights(Net())
    parameters = ndarrays_to_parameters(ndarrays)

    # Load global test set
    testset = local_mnist(context.run_config["data-dir"], "test", 200)  # conformance change: local files
    # Construct dataloader
    testloader = DataLoader(testset.with_transform(get_transforms()), batch_size=32)

    # Define strategy
    strategy = CustomFedAvg(
        fraction_fit=fraction_fit,
        fraction_evaluate=1.0,  # All nodes are sampled for evaluation
        min_available_clients=2,
        initial_parameters=parameters,
        evaluate_metrics_aggregation_fn=weighted_average,
        fit_metrics_aggregation_fn=handle_fit_metrics,
        on_fit_config_fn=on_fit_config,
        evaluate_fn=get_evaluate_fn(testloader, device="cpu"),
        save_to=context.run_config["results-path"],  # conformance change: where the strategy writes
    )
    config = ServerConfig(num_rounds=num_rounds)

    return ServerAppComponents(strategy=strategy, config=config)


# Conformance change: the tutorial's ServerApp(server_fn=server_fn) runs one strategy; this one runs the
# same components once per masking wrapper, each through Flower's legacy round loop (DefaultWorkflow, what
# ServerApp(server_fn=...) runs), and records what each did.
def wrapped(name, strategy, parameters):
    """The tutorial's CustomFedAvg (which overrides aggregate_fit, calling FedAvg's) under each wrapper."""
    if name == "fedavg":
        return strategy
    if name == "gma-fedavg":
        return LegacyGMA(strategy, aggregation="weighted-mean")
    if name == "gma-fedadam":
        return LegacyGMA(FedAdam(initial_parameters=parameters, eta=0.01, eta_l=0.01,
                                 fit_metrics_aggregation_fn=handle_fit_metrics,
                                 on_fit_config_fn=on_fit_config, evaluate_fn=strategy.evaluate_fn,
                                 min_available_clients=2))
    return LegacyFedGMA(strategy, aggregation="weighted-mean")


app = ServerApp()


@app.main()
def main(grid, context: Context) -> None:
    results = {}
    for name in ("fedavg", "gma-fedavg", "gma-fedadam", "fedgma"):
        components = server_fn(context)
        strategy = wrapped(name, components.strategy, components.strategy.initial_parameters)
        legacy = LegacyContext(context=context, config=components.config, strategy=strategy)
        DefaultWorkflow()(grid, legacy)
        final = legacy.state.array_records["parameters"].to_numpy_ndarrays()  # the workflow's global model
        path = f"{context.run_config['results-path']}.{name}.pt"
        net = Net()
        set_weights(net, final)
        torch.save(net.state_dict(), path)  # saved and reloaded as the tutorial saves its checkpoints
        net = Net()
        net.load_state_dict(torch.load(path))
        net.eval()
        with torch.no_grad():
            finite = bool(torch.isfinite(net(torch.zeros(2, 1, 28, 28))).all())
        results[name] = {"losses": dict(legacy.history.losses_centralized),
                         "train-metrics": {str(r): {k: v for k, v in strategy.train_metrics[r].items()}
                                           for r in strategy.train_metrics} if hasattr(strategy, "train_metrics")
                         else {str(r): {"max_b": v} for r, v in legacy.history.metrics_distributed_fit["max_b"]},
                         "saved-model-finite": finite}
    Path(f"{context.run_config['results-path']}").write_text(json.dumps(results))
