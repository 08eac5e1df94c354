"""PNG plots of grouped runs: mean over seeds with a shaded min-max band.

* ``accuracy.png``: OOD and in-distribution accuracy against the round;
* ``mask.png``: mask density and mean sign agreement against the round (runs
  that mask only);
* ``mask_layers.png``: mask density per layer, one panel per masked configuration.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from .results import Group


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


#: Okabe and Ito's colour-blind-safe palette (yellow left out: it vanishes on white).
COLOURS = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7")
#: Dashes that, with those colours, tell up to 28 configurations apart.
LINE_STYLES = ("-", "--", ":", "-.")


def line_style(index: int) -> dict[str, str]:
    """Colour and dash of the ``index``-th configuration: the 8th is not the 1st again (a grid like
    data-splits has 18), and a configuration keeps its look in every panel."""
    return {"color": COLOURS[index % len(COLOURS)], "linestyle": LINE_STYLES[index // len(COLOURS) % len(LINE_STYLES)]}


#: Metrics that span orders of magnitude across configurations (a server step of 1e-4 against 1).
LOG_SCALE = ("mask-effect",)


def _band(group: Group, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Rounds common to all the group's runs, and the mean, min and max of ``key`` there."""
    series = [dict(run.series(key)) for run in group.runs]
    rounds = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not rounds:
        return None
    values = np.array([[s[r] for r in rounds] for s in series])
    return np.array(rounds), values.mean(0), values.min(0), values.max(0)


def one_line(title: str, fig) -> str:
    """The title shortened to one line of the figure's width (about 13 characters per inch at size 9);
    the whole description belongs in the table's caption (summary.md)."""
    return textwrap.shorten(title, width=max(40, int(fig.get_figwidth() * 13)), placeholder=" ...")


def plot_metric_panels(groups: list[Group], panels: list[tuple[str, str]], path: Path, title: str = "") -> bool:
    """One panel per (key, y label) that some group records; one line per group. False (and no file)
    if no group has any of the keys (runs made before a diagnostic existed leave its panel out)."""
    panels = [(key, label) for key, label in panels if any(_band(group, key) for group in groups)]
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels):
        for index, group in enumerate(groups):
            band = _band(group, key)
            if band is None:
                continue
            rounds, mean, low, high = band
            style = line_style(index)
            ax.plot(rounds, mean, label=f"{group.label} (n={len(group.runs)})", **style)
            if len(group.runs) > 1:
                ax.fill_between(rounds, low, high, color=style["color"], alpha=0.2)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        if key in LOG_SCALE:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    # beside the last panel, not over the curves (a grid has up to 18 configurations), with every
    # group that any panel drew: the last panel alone may lack groups that do not record its key
    entries = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    axes[0][-1].legend(entries.values(), entries.keys(), fontsize=7, loc="upper left",
                       bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.suptitle(one_line(title, fig) + ("\n" if title else "") + "mean over seeds, shaded: min to max", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_layer_density(groups: list[Group], path: Path, title: str = "") -> bool:
    """Per-layer mask density (mean over seeds), one panel per group that masks."""
    masked = [g for g in groups if any(k.startswith("mask-density/") for k in g.runs[0].rounds[-1])]
    if not masked:
        return False
    plt = _pyplot()
    columns = min(3, len(masked))
    rows = -(-len(masked) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.8 * rows), squeeze=False)
    for ax, group in zip(axes.flat, masked):
        layers = [k for k in group.runs[0].rounds[-1] if k.startswith("mask-density/")]
        for key in layers:
            band = _band(group, key)
            if band is not None:
                ax.plot(band[0], band[1], label=key.split("/", 1)[1])
        ax.set_title(group.label, fontsize=8)
        ax.set_xlabel("round")
        ax.set_ylabel("mask density")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(masked):]:
        ax.axis("off")
    if title:
        fig.suptitle(one_line(title, fig), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_all(groups: list[Group], out: Path, title: str = "") -> list[Path]:
    """Every plot of this module into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if plot_metric_panels(groups, [("ood-accuracy", "OOD accuracy"), ("id-accuracy", "in-distribution accuracy")],
                          out / "accuracy.png", title):
        written.append(out / "accuracy.png")
    if plot_metric_panels(groups, [("mask-density", "mask density (fraction kept)"),
                                   ("mean-agreement", "mean sign agreement"),
                                   ("mask-effect", "mask effect ||w_new - w_avg|| / ||w_avg - w_t||")],
                          out / "mask.png", title):
        written.append(out / "mask.png")
    if plot_layer_density(groups, out / "mask_layers.png", title):
        written.append(out / "mask_layers.png")
    return written
