"""numpyapp: softmax regression in plain NumPy on synthetic, client-shifted data."""

import numpy as np

FEATURES, CLASSES = 8, 3


def get_model() -> dict[str, np.ndarray]:
    return {"weight": np.zeros((FEATURES, CLASSES)), "bias": np.zeros(CLASSES)}


def load_data(partition_id: int, size: int = 200, shift: float | None = None):
    """Three Gaussian classes; every client sees them shifted by 0.3 per partition id (non-IID)."""
    rng = np.random.default_rng(partition_id)
    centres = np.random.default_rng(123).normal(size=(CLASSES, FEATURES)) * 2
    y = rng.integers(0, CLASSES, size)
    return centres[y] + rng.normal(size=(size, FEATURES)) + (0.3 * partition_id if shift is None else shift), y


def loss_and_gradient(model, x, y):
    logits = x @ model["weight"] + model["bias"]
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(y)), y] + 1e-12))
    p[np.arange(len(y)), y] -= 1
    return loss, {"weight": x.T @ p / len(y), "bias": p.mean(0)}
