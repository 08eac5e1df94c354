"""Mirror a run to the tools Flower users track runs with: TensorBoard, Weights & Biases and MLflow.

The run-config key ``tracking`` names the tools (``settings.tracking_tools``).
:class:`~fedgma.outputs.RunRecorder` feeds every row it records (round 0 included:
the OOD and in-distribution accuracies and losses, the aggregated client metrics,
the mask diagnostics and the reply counts) and, at the end, the final ``model.pt``
to :class:`Trackers`, so the round loop stays Flower's and the files stay the
record. Each tool writes under the run's ``output-dir`` and works offline:

* ``tensorboard``: event files in ``tensorboard/`` (``tensorboard --logdir``); the
  run config as text (TensorBoard keeps no files, so no model);
* ``wandb``: an offline run in ``wandb/`` (``wandb sync`` uploads it later); the
  run config as the run's config, the model as a ``model`` artifact;
* ``mlflow``: a SQLite store ``mlflow/mlflow.db`` with artifacts in
  ``mlflow/artifacts/`` (``mlflow ui --backend-store-uri sqlite:///...``); the run
  config as parameters and ``run-config.json``, the model as an artifact. MLflow's
  plain-folder store refuses to start unless an environment variable opts in
  (it is "in maintenance mode"), so the store is the database MLflow recommends.

The tools are optional packages (``pip install -e '.[tracking]'``): a tool whose
packages are missing stops the run before round 1 with a ConfigError naming the
key. A resumed run continues the same W&B and MLflow runs: their ids are kept in
``metrics.json`` (``tracking``), which the checkpoint carries.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Protocol

from .settings import ConfigError

#: The import names each tool needs (MLflow's SQLite store needs SQLAlchemy and Alembic).
PACKAGES = {"tensorboard": ("tensorboard",), "wandb": ("wandb",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}
#: Row keys that are not measurements: the step itself and the wall-clock time stamp.
NOT_LOGGED = ("round", "time")
EXPERIMENT = "fedgma"  # the W&B project and MLflow experiment every run goes to


def require_packages(tools: tuple[str, ...]) -> None:
    """ConfigError naming 'tracking' and the package when a tool's package is not installed."""
    for tool in tools:
        missing = [name for name in PACKAGES[tool] if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(f"Run-config key 'tracking' names {tool!r}, but the package(s) {', '.join(missing)} "
                              "are not installed: install the tracking extras (pip install -e '.[tracking]') or "
                              f"leave {tool!r} out of 'tracking'.")


def measurements(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a recorded row, as the tools take them (outcomes and reasons are text: left out)."""
    return {key: float(value) for key, value in row.items()
            if key not in NOT_LOGGED and isinstance(value, (int, float)) and not isinstance(value, bool)}


class Log(Protocol):
    """One tool's log of one run."""

    def log_round(self, server_round: int, metrics: dict[str, float]) -> None: ...

    def finish(self, status: str, model: Path | None) -> None: ...


class TensorBoardLog:
    """Scalars per round in ``<folder>/tensorboard`` (torch's SummaryWriter, which needs tensorboard)."""

    def __init__(self, folder: Path, config: dict[str, Any], ids: dict[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))
        self.writer.add_text("run-config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log_round(self, server_round: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, server_round)
        self.writer.flush()  # readable while the run goes on

    def finish(self, status: str, model: Path | None) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class WandbLog:
    """An offline W&B run in ``<folder>/wandb``; the step is the round."""

    def __init__(self, folder: Path, config: dict[str, Any], ids: dict[str, str]) -> None:
        import wandb

        self.wandb = wandb
        resumed = ids.get("wandb-run-id")
        # No console capture, system sampling, git or code scan: the run's own files hold those, and on 2
        # cores the sampling thread would take time from the clients.
        self.run = wandb.init(mode="offline", dir=str(folder), project=EXPERIMENT, name=folder.name, id=resumed,
                              resume="allow" if resumed else None, config=config,
                              settings=wandb.Settings(console="off", silent=True, disable_git=True,
                                                      x_disable_stats=True, save_code=False))
        ids["wandb-run-id"] = self.run.id

    def log_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=server_round)

    def finish(self, status: str, model: Path | None) -> None:
        if model is not None:
            artifact = self.wandb.Artifact("model", type="model", description="the final global model's state_dict")
            artifact.add_file(str(model), policy="immutable")  # the run's own file, not a staged copy
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if status == "completed" else 1)
        self.wandb.teardown()  # stops the wandb-core process that wandb.init started


class MlflowLog:
    """An MLflow run in the SQLite store ``<folder>/mlflow/mlflow.db``; the step is the round."""

    BATCH = 100  # MLflow takes at most 100 parameters per log_batch call

    def __init__(self, folder: Path, config: dict[str, Any], ids: dict[str, str]) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.metric = Metric
        root = folder / "mlflow"
        root.mkdir(exist_ok=True)
        self.client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        if "mlflow-run-id" in ids:
            self.run_id = ids["mlflow-run-id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
        self.run_id = ids["mlflow-run-id"] = self.client.create_run(experiment_id, run_name=folder.name).info.run_id
        params = [Param(key, json.dumps(value) if not isinstance(value, str) else value)
                  for key, value in config.items()]
        for start in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + self.BATCH])
        self.client.log_dict(self.run_id, config, "run-config.json")

    def log_round(self, server_round: int, metrics: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(key, value, stamp, server_round)
                                                    for key, value in metrics.items()])

    def finish(self, status: str, model: Path | None) -> None:
        if model is not None:
            self.client.log_artifact(self.run_id, str(model))
        self.client.set_terminated(self.run_id, "FINISHED" if status == "completed" else "FAILED")


LOGS = {"tensorboard": TensorBoardLog, "wandb": WandbLog, "mlflow": MlflowLog}


class Trackers:
    """The logs of one run in the tools ``tools`` (none: every call does nothing).

    ``ids`` is where the W&B and MLflow run ids are kept (metrics.json's ``tracking``), so
    that a resumed run continues the same runs."""

    def __init__(self, tools: tuple[str, ...], folder: Path, config: dict[str, Any], ids: dict[str, str]) -> None:
        require_packages(tools)
        self.logs: list[Log] = []
        try:
            for tool in tools:
                self.logs.append(LOGS[tool](folder, config, ids))
        except BaseException:
            self.finish("failed: a tracking tool did not start", None)
            raise

    def log_round(self, row: dict[str, Any]) -> None:
        metrics = measurements(row)
        for log in self.logs:
            log.log_round(int(row["round"]), metrics)

    def finish(self, status: str, model: Path | None) -> None:
        """Close every log (once: later calls do nothing), with the final model where the run completed."""
        logs, self.logs = self.logs, []
        for log in logs:
            log.finish(status, model)
