"""A Message-API ServerApp that adds gradient masking to the FedAvg it already used."""

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedgma import FedGMA

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedGMA(FedAvg(fraction_evaluate=0.0), p=0.6, server_lr=0.5, direction="pseudo-gradient")
    initial = ArrayRecord([np.zeros((3, 1)), np.zeros(1)])  # float64, like the client's NumPy model
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=context.run_config["num-server-rounds"])
    if context.run_config["output-file"]:
        np.savez(context.run_config["output-file"], *result.arrays.to_numpy_ndarrays())
