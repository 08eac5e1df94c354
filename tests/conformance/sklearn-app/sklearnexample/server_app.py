"""sklearnexample: Flower's quickstart-sklearn ServerApp, each masking wrapper in turn."""

import warnings

import joblib
import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from sklearn.metrics import log_loss

from sklearnexample.task import (UNIQUE_LABELS, create_log_reg_and_instantiate_parameters, get_model_params,
                                 load_data, set_model_params)
from sklearnexample.variants import run_variants

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    penalty = context.run_config["penalty"]
    X_test, y_test = load_data(0, 1)[2:]

    def central_loss(arrays: ArrayRecord) -> float:
        model = set_model_params(create_log_reg_and_instantiate_parameters(penalty), arrays.to_numpy_ndarrays())
        return log_loss(y_test, model.predict_proba(X_test), labels=UNIQUE_LABELS)

    def save_and_reload(arrays: ArrayRecord, variant: str) -> bool:
        """Save final model parameters as the example does, load the file back and predict."""
        path = f"{context.run_config['results-path']}.{variant}.pkl"
        model = set_model_params(create_log_reg_and_instantiate_parameters(penalty), arrays.to_numpy_ndarrays())
        joblib.dump(model, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(np.isfinite(joblib.load(path).predict_proba(X_test)).all())

    model = create_log_reg_and_instantiate_parameters(penalty)
    run_variants(grid, context, ArrayRecord(get_model_params(model)), central_loss, save_and_reload,
                 options=dict(fraction_train=1.0, fraction_evaluate=0.0))
