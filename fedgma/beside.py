"""A run beside its baseline: one figure and a two-line summary on the same seed and data.

The first run (``configs/first-run.toml``) names its baseline's run-config file in
``baseline-config`` and ends by printing the command that runs it; the baseline
(``configs/first-run-baseline.toml``) names the first run's folder in
``compare-with``. Before round 1 the app checks that the folder holds a finished run
with the same seed, data and round count (a ConfigError naming the keys that
differ); after the last round it writes ``beside.png`` (OOD accuracy of both runs
by round) and prints the summary. One seed says what happened on one seed: the
caption says so, and says which run ended higher, also when it is the baseline.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from .labels import method_label
from .settings import DEFAULT_RUN_CONFIG, ConfigError, Settings, current_keys

#: What two runs must share to be put side by side: seed, data, model and training budget.
SAME = ("seed", "task", "environments", "partitioner", "classes-per-client", "dirichlet-alpha", "flip-low",
        "flip-high", "ood-flip", "id-flip", "train-validation-examples", "test-validation-examples",
        "max-client-examples", "max-test-examples", "num-server-rounds", "local-epochs", "batch-size", "optimizer",
        "lr", "preprocessing")


TASKS = {"binary": "binary colored MNIST", "multiclass": "multi-class colored MNIST", "irm": "IRM's colored MNIST"}


def run_label(config: dict[str, Any]) -> str:
    """The method of a run config, recorded under any release of the app, as every table and plot names it."""
    return method_label(DEFAULT_RUN_CONFIG | current_keys(config))


def partner_report(settings: Settings) -> dict[str, Any] | None:
    """The finished run ``compare-with`` names (its metrics.json), checked against this run; None if unset."""
    if not settings.compare_with:
        return None
    path = Path(settings.compare_with).expanduser().resolve() / "metrics.json"
    if not path.is_file():
        raise ConfigError(f"Run-config key 'compare-with': {path} does not exist; run the first run before its "
                          "baseline, or set compare-with=''.")
    report = json.loads(path.read_text())
    if report.get("status") != "completed":
        raise ConfigError(f"Run-config key 'compare-with': the run in {path.parent} is not completed "
                          f"(status {report.get('status')!r}).")
    mine, theirs = settings.to_run_config(), current_keys(report.get("config", {}))
    differ = [key for key in SAME if mine.get(key) != theirs.get(key)]
    if differ:
        raise ConfigError(f"Run-config key 'compare-with': the run in {path.parent} differs in "
                          + ", ".join(f"'{key}' ({theirs.get(key)!r} there, {mine.get(key)!r} here)" for key in differ)
                          + "; runs side by side need the same seed, data and training budget.")
    return report


def final_ood(rows: list[dict[str, Any]]) -> float:
    return float(rows[-1]["ood-accuracy"])


def summary(settings: Settings, rows: list[dict[str, Any]], partner: dict[str, Any]) -> list[str]:
    """Two lines: both runs' final OOD accuracy and the difference; what one seed can and cannot say."""
    mine, theirs = run_label(settings.to_run_config()), run_label(partner["config"])
    difference = final_ood(partner["rounds"]) - final_ood(rows)
    ahead = theirs if difference > 0 else mine if difference < 0 else "neither"
    return [f"Final OOD accuracy: {theirs} {final_ood(partner['rounds']):.3f}, {mine} {final_ood(rows):.3f}, a "
            f"difference of {difference:+.3f}; same seed {settings.seed}, data and {settings.num_server_rounds} "
            "rounds.",
            f"One seed: {ahead} ended higher here. Whether a difference holds over seeds, and whether it comes from "
            "sign agreement, is the headline's question (README, Expected results: 5 seeds, matched controls)."]


def draw(settings: Settings, rows: list[dict[str, Any]], partner: dict[str, Any], path: Path) -> None:
    """OOD accuracy by round of this run and its partner, with the summary as the caption."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6))
    for report, style in ((partner, "--"), ({"config": settings.to_run_config(), "rounds": rows}, "-")):
        points = [(row["round"], row["ood-accuracy"]) for row in report["rounds"] if "ood-accuracy" in row]
        ax.plot(*zip(*points), style, label=run_label(report["config"]))
    ax.set_xlabel("round")
    ax.set_ylabel("OOD test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(textwrap.fill(f"{TASKS[settings.task]}, seed {settings.seed}: {run_label(partner['config'])} "
                               "beside its baseline", 80), fontsize=10)
    caption = "\n".join(textwrap.fill(line, 110) for line in summary(settings, rows, partner))
    fig.text(0.01, 0.01, caption, fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def next_command(settings: Settings) -> str | None:
    """The command that runs ``baseline-config``, for the end of the run (None if unset)."""
    if not settings.baseline_config:
        return None
    return ("FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . --stream "
            f"--run-config {settings.baseline_config} --federation-config "
            f"\"num-supernodes={settings.min_available_nodes} client-resources-num-cpus=1\"")
