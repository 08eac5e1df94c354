"""numpyapp: a Flower / NumPy ServerApp, each masking wrapper in turn."""

import json
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from numpyapp.task import get_model, load_data, loss_and_gradient
from numpyapp.variants import run_variants

app = ServerApp()
test_x, test_y = load_data(99, size=500, shift=0.15)  # between the two clients


def central_loss(arrays: ArrayRecord) -> float:
    return loss_and_gradient({name: array.numpy() for name, array in arrays.items()}, test_x, test_y)[0]


def save_and_reload(arrays: ArrayRecord, variant: str, path: str = "") -> bool:
    saved = Path(f"{path}.{variant}.json")
    saved.write_text(json.dumps({name: array.numpy().tolist() for name, array in arrays.items()}))
    model = {name: np.array(values) for name, values in json.loads(saved.read_text()).items()}
    return bool(np.isfinite(loss_and_gradient(model, test_x, test_y)[0]))


@app.main()
def main(grid: Grid, context: Context) -> None:
    path = str(context.run_config["results-path"])
    run_variants(grid, context, ArrayRecord({name: Array(a) for name, a in get_model().items()}), central_loss,
                 lambda arrays, variant: save_and_reload(arrays, variant, path), gradient=True,
                 train_config=ConfigRecord({"lr": float(context.run_config["lr"])}))
