"""Short names for configurations, the same in every table and plot: "FedAvg", "FedGMA (p 0.22, eta_s 1,
pseudo-gradient)", "GMA (soft, tau 0.4)", then whatever else differs ("partitioner iid")."""

from __future__ import annotations

from typing import Any

#: The run-config keys that belong to the server method; a label shows those the method uses.
METHOD_KEYS = frozenset({
    "strategy", "gma", "p", "server-lr", "fedgma-direction", "fedgma-control", "mask", "tau", "agreement-weighting",
    "proximal-mu", "server-momentum", "server-momentum-lr", "fedopt-eta", "fedopt-beta1", "fedopt-beta2",
    "fedopt-tau", "trimmed-beta", "num-malicious-nodes", "multikrum-select", "qfedavg-q"})

NAMES = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedavgm": "FedAvgM", "fedadam": "FedAdam", "fedyogi": "FedYogi",
         "fedadagrad": "FedAdagrad", "fedmedian": "FedMedian", "fedtrimmedavg": "FedTrimmedAvg", "krum": "Krum",
         "multikrum": "MultiKrum", "bulyan": "Bulyan", "qfedavg": "q-FedAvg", "fedgma": "FedGMA"}


#: Keys a run ignores when it has no differential privacy: they neither name nor tell apart configurations.
DP_KEYS = frozenset({"dp-clipping-norm", "dp-epsilon", "dp-delta", "dp-noise-multiplier"})


def inert_keys(config: dict[str, Any]) -> frozenset[str]:
    """The keys of ``config`` that do nothing in its run (the DP settings of a run without DP)."""
    return DP_KEYS if config.get("dp", "none") == "none" else frozenset()


def short_value(value: Any) -> str:
    """A run-config value as labels and run names show it: true/false, 0.0001, 1e-05, text."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _base(config: dict[str, Any]) -> str:
    """The wrapped (or only) strategy with the knobs it uses."""
    name = config["strategy"]
    if name == "fedavgm":
        if config["server-momentum"] == 0:
            return f"FedAvg (server lr {short_value(config['server-momentum-lr'])})"
        return f"FedAvgM (momentum {short_value(config['server-momentum'])}, lr {short_value(config['server-momentum-lr'])})"
    knobs = {"fedprox": [("mu", "proximal-mu")], "fedadam": [("eta", "fedopt-eta")], "fedyogi": [("eta", "fedopt-eta")],
             "fedadagrad": [("eta", "fedopt-eta")], "fedtrimmedavg": [("beta", "trimmed-beta")],
             "krum": [("f", "num-malicious-nodes")], "bulyan": [("f", "num-malicious-nodes")],
             "multikrum": [("f", "num-malicious-nodes"), ("m", "multikrum-select")],
             "qfedavg": [("q", "qfedavg-q")]}.get(name, [])
    shown = ", ".join(f"{symbol} {short_value(config[key])}" for symbol, key in knobs)
    return NAMES[name] + (f" ({shown})" if shown else "")


def method_label(config: dict[str, Any]) -> str:
    """The server method of a (complete) run config in a few words."""
    if config["strategy"] == "fedgma":
        parts = [f"p {short_value(config['p'])}", f"eta_s {short_value(config['server-lr'])}"]
        if config["fedgma-direction"] != "gradient":
            parts.append(config["fedgma-direction"])
        if config.get("fedgma-control", "none") != "none":
            parts.append(f"{config['fedgma-control']} control")
        return f"FedGMA ({', '.join(parts)})"
    if config["gma"]:
        base = "" if config["strategy"] == "fedavg" else f" over {_base(config)}"
        return f"GMA ({config['mask']}, tau {short_value(config['tau'])}){base}"
    return _base(config)


def method_family(config: dict[str, Any]) -> str:
    """The method without its knobs ("FedAvg", "FedGMA", "FedGMA, random-mask control", "GMA over FedAdam"):
    what a plot's colour stands for, the same in every figure."""
    name = config["strategy"]
    if name == "fedgma":
        control = config.get("fedgma-control", "none")
        return "FedGMA" if control == "none" else f"FedGMA, {control} control"
    base = "FedAvg" if name == "fedavgm" and config["server-momentum"] == 0 else NAMES[name]
    if config["gma"]:
        return "GMA" if base == "FedAvg" else f"GMA over {base}"
    return base


def setting_label(config: dict[str, Any], differing: list[str]) -> str:
    """The ``differing`` keys that are not the method's, as "key value" ('' when only the method differs)."""
    return ", ".join(f"{key} {short_value(config.get(key))}" for key in differing
                     if key not in METHOD_KEYS and key not in inert_keys(config))


def configuration_label(config: dict[str, Any], differing: list[str]) -> str:
    """``method_label`` plus the other ``differing`` keys (not the method's) as "key value"."""
    return ", ".join(part for part in (method_label(config), setting_label(config, differing)) if part)
