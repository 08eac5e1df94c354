"""pytorchexample: A Flower / PyTorch app (Flower's quickstart-pytorch ServerApp, each masking wrapper in turn)."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from pytorchexample.task import build_model, load_centralized_dataset, test
from pytorchexample.variants import run_variants

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    fraction_evaluate: float = context.run_config["fraction-evaluate"]
    lr: float = context.run_config["learning-rate"]
    name, data_dir = context.run_config["model"], context.run_config["data-dir"]
    testloader = load_centralized_dataset(data_dir)

    def global_evaluate(arrays: ArrayRecord) -> float:
        model = build_model(name)
        model.load_state_dict(arrays.to_torch_state_dict())
        return test(model, testloader, torch.device("cpu"))[0]

    def save_and_reload(arrays: ArrayRecord, variant: str) -> bool:
        """Save final model to disk as the example does, load it back and evaluate it in eval() mode."""
        path = f"{context.run_config['results-path']}.{variant}.pt"
        torch.save(arrays.to_torch_state_dict(), path)
        model = build_model(name)
        model.load_state_dict(torch.load(path))
        model.eval()
        with torch.no_grad():
            return bool(torch.isfinite(model(next(iter(testloader))["img"])).all())

    run_variants(grid, context, ArrayRecord(build_model(name).state_dict()), global_evaluate, save_and_reload,
                 options=dict(fraction_evaluate=fraction_evaluate), train_config=ConfigRecord({"lr": lr}))
