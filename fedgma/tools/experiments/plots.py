"""PNG plots of grouped runs, drawn to be read at a glance.

* ``accuracy.png``: OOD and in-distribution accuracy against the round;
* ``mask.png``: mask density, mean sign agreement and mask effect against the round (runs that mask only);
* ``mask_layers.png``: mask density per layer, per masked configuration.

Every figure keeps these rules, and :func:`check_figure` (run on every figure before it is saved, and by
``tests/test_plots.py`` on every committed grid) refuses one that breaks the first four:

* a one-line title;
* at most ``MAX_LINES`` lines per panel: more configurations become small multiples, one column of panels per
  setting (the keys other than the method's, "partitioner iid") or, where only the method differs, per method;
* each method (``labels.method_family``: FedAvg, FedGMA, GMA, FedYogi, ...) has one colour of a colour-blind-safe
  palette, the same in every figure, and no two methods share a colour; variants of one method in a panel
  differ by line style and marker;
* whole-number round ticks;
* a band, the 95% confidence interval of the mean over seeds, only around lines with two or more seeds (and not
  where one method's variants share a panel, nor on a log scale), and a caption under the figure that says so.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from fedgma.labels import NAMES, method_family, setting_label
from .results import Group
from .statistics import mean_intervals


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


#: The most lines one panel shows.
MAX_LINES = 6
#: Okabe and Ito's colour-blind-safe palette (yellow left out: it vanishes on white), then Paul Tol's muted
#: colours that differ from those, then grey.
PALETTE = ("#000000", "#0072B2", "#D55E00", "#E69F00", "#56B4E9", "#009E73", "#CC79A7",
           "#882255", "#44AA99", "#999933", "#332288", "#AA4499", "#117733", "#DDCC77", "#888888")
#: Every method family in a fixed order, the project's own first: the family's colour is PALETTE at its place,
#: so the first 15 never share one (a figure that would give two families one colour is refused).
FAMILIES = ("FedAvg", "FedGMA", "GMA", "FedYogi", "FedGMA, random-mask control", "FedGMA, uniform-step control",
            "FedAdam", "FedProx")
FAMILIES += tuple(f"GMA over {name}" for name in ("FedAdam", "FedProx", "FedYogi"))
FAMILIES += tuple(name for name in NAMES.values() if name not in FAMILIES)
FAMILIES += tuple(f"GMA over {name}" for name in NAMES.values() if f"GMA over {name}" not in FAMILIES
                  and name not in ("FedAvg", "FedGMA"))
#: Line style and marker of the k-th variant of one method within a panel.
DASHES = ("-", "--", ":", "-.")
MARKERS = ("", "o", "s", "^")
BAND = "95% CI of the mean over seeds"
#: Metrics that span orders of magnitude across configurations (a server step of 1e-4 against 1).
LOG_SCALE = ("mask-effect",)
#: Metrics that are fractions: the axis stays within [0, 1] where a wide band (3 seeds) would go beyond.
FRACTIONS = ("ood-accuracy", "id-accuracy", "mask-density", "mean-agreement")


def family_colour(family: str) -> str:
    """The colour of a method family in every figure."""
    return PALETTE[FAMILIES.index(family) % len(PALETTE)] if family in FAMILIES else PALETTE[-1]


def variant_style(index: int) -> dict[str, str]:
    """Line style and marker of a panel's ``index``-th line of one method."""
    return {"linestyle": DASHES[index % len(DASHES)], "marker": MARKERS[index // len(DASHES) % len(MARKERS)]}


def _band(group: Group, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Rounds common to all the group's runs, and the mean of ``key`` there with its 95% CI (NaN for one run)."""
    series = [dict(run.series(key)) for run in group.runs]
    rounds = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not rounds:
        return None
    return (np.array(rounds), *mean_intervals(np.array([[s[r] for r in rounds] for s in series])))


def one_line(title: str, fig) -> str:
    """The title shortened to one line of the figure's width (about 13 characters per inch at size 9)."""
    return textwrap.shorten(title, width=max(40, int(fig.get_figwidth() * 13)), placeholder=" ...")


def columns_of(groups: list[Group]) -> list[tuple[str, list[Group]]]:
    """The groups in columns of at most MAX_LINES lines, each with its heading ('' for a single column): one column
    per setting (the keys other than the method's: the methods side by side under each), else one column if they
    fit, else one per method family where each has several variants, else even chunks in the groups' order."""
    def split(key, fewest: int = 1) -> list[tuple[str, list[Group]]] | None:
        parts: dict[str, list[Group]] = {}
        for group in groups:
            parts.setdefault(key(group), []).append(group)
        fits = all(fewest <= len(members) <= MAX_LINES for members in parts.values())
        return list(parts.items()) if len(parts) > 1 and fits else None

    by_setting = split(lambda g: setting_label(g.config, list(g.differing)))
    if by_setting or len(groups) <= MAX_LINES:
        return by_setting or [("", groups)]
    by_family = split(lambda g: method_family(g.config), fewest=2)
    if by_family:
        return by_family
    size = -(-len(groups) // -(-len(groups) // MAX_LINES))  # as even as MAX_LINES allows
    return [(f"{start + 1} to {min(start + size, len(groups))} of {len(groups)}", groups[start:start + size])
            for start in range(0, len(groups), size)]


def _line_label(group: Group, heading: str) -> str:
    """The group's label without the setting its column heading already names."""
    setting = setting_label(group.config, list(group.differing))
    if heading and setting == heading:
        return group.label.removesuffix(f", {setting}")
    return group.label


def _caption(groups: list[Group], some_unbanded: bool) -> str:
    seeds = sorted({len(group.runs) for group in groups})
    if seeds == [1]:
        return "Lines: one run (one seed) each, so no bands. Colour: method; line style: its variant."
    counts = " or ".join(map(str, seeds))
    return (f"Lines: mean over {counts} seeds; bands: {BAND}, where a line has 2 or more seeds"
            + (" (none on a log scale, or where a panel holds several variants of one method: they would "
               "cover each other)" if some_unbanded else "") + ". Colour: method; line style: its variant.")


def _draw_line(ax, group: Group, key: str, style: dict, label: str, family: str, banded: bool) -> None:
    band = _band(group, key)
    if band is None:
        return
    rounds, mean, low, high = band
    (line,) = ax.plot(rounds, mean, label=label, markevery=max(1, len(rounds) // 10), markersize=4, **style)
    line.set_gid(family)  # what check_figure reads back: the colour must be this family's
    if banded and len(group.runs) > 1:
        ax.fill_between(rounds, low, high, color=style["color"], alpha=0.2, linewidth=0)


def plot_metric_panels(groups: list[Group], panels: list[tuple[str, str]], path: Path, title: str) -> bool:
    """Rows: the (key, y label) panels some group records; columns: ``columns_of(groups)``. False (and no
    file) if no group has any of the keys (runs made before a diagnostic existed leave its row out)."""
    panels = [(key, label) for key, label in panels if any(_band(group, key) for group in groups)]
    if not panels:
        return False
    columns = columns_of(groups)
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(4.6 * len(columns), 3.3 * len(panels)),
                             squeeze=False, sharex=True, sharey="row")
    some_unbanded = any(key in LOG_SCALE for key, _ in panels)
    for column, (heading, members) in enumerate(columns):
        seen: dict[str, int] = {}
        styles = []
        for group in members:
            family = method_family(group.config)
            styles.append((family, {"color": family_colour(family), **variant_style(seen.get(family, 0))}))
            seen[family] = seen.get(family, 0) + 1
        one_each = len(seen) == len(members)  # bands of one colour over each other would hide the lines
        some_unbanded |= not one_each
        for row, (key, ylabel) in enumerate(panels):
            ax = axes[row][column]
            for group, (family, style) in zip(members, styles):
                _draw_line(ax, group, key, style, _line_label(group, heading), family,
                           banded=one_each and key not in LOG_SCALE)
            ax.set_ylabel(ylabel if column == 0 else "")
            if key in LOG_SCALE:
                ax.set_yscale("log")
            if key in FRACTIONS:
                low, high = ax.get_ylim()
                ax.set_ylim(max(0.0, low), min(1.0, high))
            ax.grid(alpha=0.3)
        if heading:
            axes[0][column].set_title(heading, fontsize=9)
        axes[-1][column].set_xlabel("round")
        # below the column, with every line any of its rows drew (a row's metric may be missing for some groups)
        entries = {label: handle for ax in axes[:, column] for handle, label in zip(*ax.get_legend_handles_labels())}
        axes[-1][column].legend(entries.values(), entries.keys(), fontsize=7, loc="upper left",
                                bbox_to_anchor=(0, -0.22), borderaxespad=0, frameon=False)
    _finish(fig, title, _caption(groups, some_unbanded), path)
    return True


def plot_layer_density(groups: list[Group], path: Path, title: str) -> bool:
    """Mask density per layer (mean over seeds), one panel per masked group (a panel per MAX_LINES layers)."""
    masked = [g for g in groups if any(k.startswith("mask-density/") for k in g.runs[0].rounds[-1])]
    if not masked:
        return False
    panels = []
    for group in masked:
        layers = [k for k in group.runs[0].rounds[-1] if k.startswith("mask-density/")]
        parts = ([[k for k in layers if k.endswith(".weight")], [k for k in layers if not k.endswith(".weight")]]
                 if len(layers) > MAX_LINES else [layers])
        for part in parts:
            panels += [(group, part[start:start + MAX_LINES]) for start in range(0, len(part), MAX_LINES)]
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.0 * columns, 3.6 * rows), squeeze=False)
    for ax, (group, layers) in zip(axes.flat, panels):
        for index, key in enumerate(layers):
            band = _band(group, key)
            if band is not None:
                (line,) = ax.plot(band[0], band[1], label=key.split("/", 1)[1], color=PALETTE[index])
                line.set_gid("layer")  # layers, not methods: distinct colours within the panel only
        ax.set_title(group.label, fontsize=8)
        ax.set_xlabel("round")
        ax.set_ylabel("mask density")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    _finish(fig, title, "Lines: mean over seeds of the fraction of each layer's coordinates the mask keeps.", path)
    return True


def _finish(fig, title: str, caption: str, path: Path) -> None:
    """Integer round ticks, the one-line title and the caption; checked, saved and closed."""
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # every panel here has the round on its x axis, from round 0 (the initial model)
        ax.set_xlim(left=0)  # a run of one round would otherwise span 0.95 to 1.05, with no whole number but 1
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(one_line(title, fig), fontsize=10)
    fig.tight_layout()
    fig.text(0.01, 0.0, textwrap.fill(caption, width=int(fig.get_figwidth() * 15)), fontsize=8, va="top")
    check_figure(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


class FigureRuleError(ValueError):
    """A figure breaks one of the rules of this module's docstring."""


def check_figure(fig) -> None:
    """FigureRuleError naming the broken rule: a title over one line, a panel with more than MAX_LINES lines or
    two alike, a method in another colour than its own or two methods in one, rounds that are not whole numbers.
    (Bands are drawn only for lines of two or more seeds: :func:`_draw_line`.)"""
    title = fig._suptitle.get_text() if fig._suptitle else ""
    if "\n" in title:
        raise FigureRuleError(f"the title is more than one line: {title!r}")
    colours: dict[str, str] = {}
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if line.get_gid()]
        if len(lines) > MAX_LINES:
            raise FigureRuleError(f"a panel ({ax.get_title() or ax.get_ylabel()!r}) has {len(lines)} lines; at "
                                  f"most {MAX_LINES}")
        looks = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines]
        if len(set(looks)) < len(looks):
            raise FigureRuleError(f"two lines look alike in a panel ({ax.get_title() or ax.get_ylabel()!r})")
        for line in lines:
            family = line.get_gid()
            if family == "layer":
                continue
            if family_colour(family) != line.get_color():
                raise FigureRuleError(f"{family} is drawn in {line.get_color()}, not its colour "
                                      f"{family_colour(family)}")
            if colours.setdefault(line.get_color(), family) != family:
                raise FigureRuleError(f"{family} and {colours[line.get_color()]} share the colour {line.get_color()}")
        if ax.get_xlabel() == "round" and any(tick != round(tick) for tick in ax.get_xticks()):
            raise FigureRuleError(f"round ticks that are not whole numbers: {list(ax.get_xticks())}")
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    if any(len(legend.get_texts()) > MAX_LINES for legend in legends):
        raise FigureRuleError(f"a legend has more than {MAX_LINES} entries")


def plot_all(groups: list[Group], out: Path, title: str = "") -> list[Path]:
    """Every plot of this module into ``out``; returns the files written. ``title``: what the runs are (a grid's
    name), shown after what each figure plots."""
    out.mkdir(parents=True, exist_ok=True)
    named = lambda what: f"{what}: {title}" if title else what  # noqa: E731 - one line per figure below
    written = []
    if plot_metric_panels(groups, [("ood-accuracy", "OOD accuracy"), ("id-accuracy", "in-distribution accuracy")],
                          out / "accuracy.png", named("Accuracy by round")):
        written.append(out / "accuracy.png")
    if plot_metric_panels(groups, [("mask-density", "mask density (fraction kept)"),
                                   ("mean-agreement", "mean sign agreement"),
                                   ("mask-effect", "mask effect ||w_new - w_avg|| / ||w_avg - w_t||")],
                          out / "mask.png", named("Mask diagnostics by round")):
        written.append(out / "mask.png")
    if plot_layer_density(groups, out / "mask_layers.png", named("Mask density per layer")):
        written.append(out / "mask_layers.png")
    return written

