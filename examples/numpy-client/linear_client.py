"""A NumPyClient that knows nothing of FedGMA: least-squares regression in plain NumPy."""

import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient

from fedgma import clientapp_from_numpy_client  # change 1 of 2

TRUE_WEIGHTS, TRUE_BIAS = np.array([[2.0], [-1.0], [0.5]]), np.array([0.3])


def partition(partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """50 noisy examples of y = x @ w + b, different for every client."""
    rng = np.random.default_rng(partition_id)
    x = rng.normal(size=(50, 3)) + partition_id  # clients see shifted inputs (non-IID)
    return x, x @ TRUE_WEIGHTS + TRUE_BIAS + 0.1 * rng.normal(size=(50, 1))


class LinearClient(NumPyClient):
    def __init__(self, partition_id: int, steps: int = 5, lr: float = 0.02) -> None:
        self.x, self.y = partition(partition_id)
        self.steps, self.lr = steps, lr

    def fit(self, parameters, config):
        w, b = (p.copy() for p in parameters)
        for _ in range(self.steps):  # gradient descent on the mean squared error
            error = self.x @ w + b - self.y
            w -= self.lr * 2 * self.x.T @ error / len(self.y)
            b -= self.lr * 2 * error.mean(0)
        return [w, b], len(self.y), {"mse": float(np.mean((self.x @ w + b - self.y) ** 2))}

    def evaluate(self, parameters, config):
        w, b = parameters
        return float(np.mean((self.x @ w + b - self.y) ** 2)), len(self.y), {}


def client_fn(context: Context) -> NumPyClient:
    return LinearClient(int(context.node_config["partition-id"]))


app = clientapp_from_numpy_client(client_fn)  # change 2 of 2: was ClientApp(client_fn=client_fn)
