"""What a run leaves on disk: metrics.json, metrics.csv, model.pt and accuracy.png.

``metrics.json`` and ``metrics.csv`` are rewritten after every round (atomically),
so a run that stops half way keeps every finished round; ``status`` in
metrics.json says whether the run completed, was stopped on purpose or failed. The same
rows and the final model also go to the tracking tools the run config names
(:mod:`fedgma.tracking`).
"""

from __future__ import annotations

import csv
import io
import json
import platform
import sys
import time
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from .machine import machine
from .safe_files import atomic_write
from .labels import method_label
from .settings import ConfigError, Settings, tracking_tools
from .tracking import Trackers

def resolve_output_dir(settings: Settings) -> Path:
    """``output-dir`` as an absolute path; '' becomes ./outputs/<time>-<strategy>."""
    if settings.output_dir:
        return Path(settings.output_dir).expanduser().resolve()
    name = settings.strategy + ("-gma" if settings.gma else "")
    return Path.cwd() / "outputs" / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("flwr", "torch", "numpy", "flwr-datasets", "ray"):
        try:
            found[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing optional package is just not listed
            pass
    return found


class RunRecorder:
    """Collects one row per round and keeps the files in ``folder`` up to date.

    A resumed run passes the checkpoint's ``rows`` and ``report`` (metrics.json's
    top level): the rows continue, ``wall-seconds`` keeps adding up, and
    ``resumed`` lists each resumption with the round it started from. Every row and
    the final model also go to the run's tracking tools (``tracking``), whose run ids
    metrics.json keeps (its ``tracking``) for a resumed run to continue.
    """

    def __init__(self, folder: Path, settings: Settings, rows: list[dict[str, Any]] | None = None,
                 report: dict[str, Any] | None = None) -> None:
        self.folder = folder
        prepare_output_dir(folder, fresh=report is None, overwrite=settings.overwrite)
        self.rows: list[dict[str, Any]] = list(rows or [])
        here = machine()
        self.report: dict[str, Any] = {
            "status": "running", "started": datetime.now().isoformat(timespec="seconds"),
            "seed": settings.seed, "versions": versions(), "machine": here, "num-clients": 0, "wall-seconds": 0.0,
        } | (report or {}) | {"status": "running", "config": settings.to_run_config(), "rounds": self.rows}
        if report is not None:
            self.report.setdefault("resumed", []).append(
                {"from-round": self.rows[-1]["round"] if self.rows else 0,
                 "at": datetime.now().isoformat(timespec="seconds"), "machine": here})
        tools = tracking_tools(settings.tracking)
        self.trackers = Trackers(tools, folder, settings.to_run_config(),
                                 self.report.setdefault("tracking", {}) if tools else {})
        self._clock = RoundTimer()
        self._write_json()

    def summary(self) -> dict[str, Any]:
        """metrics.json's top level without the rows (what a checkpoint keeps besides them)."""
        return {key: value for key, value in self.report.items() if key != "rounds"}

    def record_round(self, row: dict[str, Any]) -> None:
        """Add one round's row; ``num-clients`` is the most clients seen connected in any round."""
        self.rows.append(row)
        self.report["num-clients"] = max(self.report["num-clients"], int(row.get("clients-connected", 0)))
        self._write_json()
        self._write_csv()
        self.trackers.log_round(row)

    def finish(self, state_dict: dict[str, torch.Tensor], status: str = "completed") -> None:
        """Save the final model and plot, and mark the run ``status``. ``model.pt`` is a plain state dict
        of tensors, which ``torch.load`` reads with its safe default (``weights_only=True``)."""
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        atomic_write(self.folder / "model.pt", buffer.getvalue())
        plot_accuracy(self.rows, self.folder / "accuracy.png",
                      f"{method_label(self.report['config'])}, seed {self.report['seed']}: accuracy by round")
        self.set_status(status, model=self.folder / "model.pt")

    def end_status(self, problem: BaseException) -> str:
        """The status of a run that ``problem`` ended before its last round: ``stopped: ...`` for a stop on purpose
        (:func:`stopped_on_purpose`), naming the round it was in, else ``failed: <exception>``."""
        if not stopped_on_purpose(problem):
            return f"failed: {type(problem).__name__}: {problem}"
        current = self.rows[-1]["round"] + 1 if self.rows else 0
        return f"stopped: by the operator during round {current}"

    def set_status(self, status: str, model: Path | None = None) -> None:
        """Mark the run's status without touching the recorded rounds, and close its tracking logs (with
        ``model``, the final model, as their artifact)."""
        self.report["status"] = status
        self.report["finished"] = datetime.now().isoformat(timespec="seconds")
        self._write_json()
        self.trackers.finish(status, model)

    def _write_json(self) -> None:
        self.report["wall-seconds"] = round(self.report["wall-seconds"] + self._clock.lap(), 3)
        atomic_write(self.folder / "metrics.json", json.dumps(self.report, indent=2))

    def _write_csv(self) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.folder / "metrics.csv", buffer.getvalue())


def stopped_on_purpose(problem: BaseException) -> bool:
    """Whether ``problem`` is an operator's stop: Ctrl-C outside Flower (KeyboardInterrupt), or SIGINT / SIGTERM /
    SIGQUIT (``deploy down``, Ctrl-C, ``kill``) in a Flower process, whose handler
    (``flwr.supercore.exit.register_signal_handlers``) exits gracefully with ``SystemExit(0)`` from wherever the
    round loop was. Flower's exits on errors use code 1."""
    return isinstance(problem, KeyboardInterrupt) or (isinstance(problem, SystemExit) and problem.code in (0, None))


def prepare_output_dir(folder: Path, fresh: bool, overwrite: bool) -> None:
    """Create ``folder``; a fresh run never replaces another run's records unless told to.

    ConfigError naming the folder when it is a file, or when a fresh run finds a ``metrics.json`` there
    and ``overwrite`` is false: that run's rows would be lost."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"Run-config key 'output-dir': {folder} is a file, not a folder.")
    if fresh and not overwrite and (folder / "metrics.json").exists():
        raise ConfigError(f"Run-config key 'output-dir': {folder} already holds a run (its metrics.json). Continue "
                          "it with resume=true, write this run to a new output-dir, or replace it with overwrite=true.")
    folder.mkdir(parents=True, exist_ok=True)


def plot_accuracy(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """OOD and in-distribution accuracy against the round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("ood-accuracy", "OOD test (colours mostly swapped)"), ("id-accuracy", "in-distribution test")):
        points = [(row["round"], row[key]) for row in rows if key in row]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or path.parent.name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class RoundTimer:
    """Seconds since the previous call (the first call measures from creation)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed
