"""The run configuration as one typed, validated object.

Flower hands every app a flat ``run_config`` dict (``[tool.flwr.app.config]`` in
``pyproject.toml``, overridden with ``flwr run . --run-config "key=value"``). This
module is the only place that reads it: :meth:`Settings.from_run_config` checks
every key, type and range once, at start-up, and everything else receives the
resulting frozen :class:`Settings` (or plain values taken from it). An unknown
key, a wrong type or a value out of range raises :class:`ConfigError` naming the
key and what is allowed, so a run stops before round 1 instead of failing later.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("fedgma", "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
              "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "qfedavg")


#: The largest count (rounds, epochs, clients) a run config may ask for: beyond it a run would not end.
MAX_COUNT = 100_000


class ConfigError(ValueError):
    """A run-config key is unknown, has the wrong type, or is out of range."""


def _opt(default: Any, help: str, *, choices: tuple = (), low: float | None = None,
         high: float | None = None, low_open: bool = False) -> Any:
    """Declare one run-config key: its default, meaning and allowed values."""
    return field(default=default, metadata={
        "help": help, "choices": choices, "low": low, "high": high, "low_open": low_open,
    })


@dataclass(frozen=True)
class Settings:
    """Every knob of a run. Field ``foo_bar`` is run-config key ``foo-bar``."""

    # --- experiment -------------------------------------------------------
    seed: int = _opt(0, "Seed for model init, partitioning, colouring and sampling (below 2^32, which every "
                        "generator the run seeds accepts).", low=0, high=2**32 - 1)
    num_server_rounds: int = _opt(15, "Federated rounds (Flower's name for the key, as in its app templates).",
                                  low=1, high=MAX_COUNT)
    output_dir: str = _opt("", "Folder for metrics.json, metrics.csv, model.pt, accuracy.png; "
                               "'' = ./outputs/<time>-<strategy> under the ServerApp's working directory.")
    overwrite: bool = _opt(False, "Let a fresh run replace the records of an earlier run in 'output-dir' (without "
                                  "it, a fresh run into a folder that holds a metrics.json stops before round 1).")
    compare_with: str = _opt("", "Folder of a finished run with the same seed, data and rounds (a baseline's "
                                 "partner): the run ends by drawing itself beside it (beside.png) and printing "
                                 "both final accuracies; '' = none.")
    baseline_config: str = _opt("", "A run-config file that runs this run's baseline (configs/first-run-baseline"
                                    ".toml): the run ends by printing the command that runs it; '' = none.")
    resume: bool = _opt(False, "Continue the run in 'output-dir' from its last round checkpoint (rounds done are "
                               "not redone; a larger num-server-rounds extends a completed run).")
    verbose: bool = _opt(False, "Also print Flower's own lines of every round (banner, sampling, reply counts, "
                                "aggregated MetricRecords) and its 'Final results' dump; without it the console "
                                "shows the app's one line per round (Message-API app).")
    tracking: str = _opt("none", "Also log every round, the resolved run config and the final model to these tools, "
                                 "comma-separated: 'tensorboard' (event files), 'wandb' (Weights & Biases, offline "
                                 "mode), 'mlflow' (a local SQLite store), each under 'output-dir'; 'none' = files "
                                 "only. Needs the tracking extras (pip install -e '.[tracking]').")
    # --- data ---------------------------------------------------------------
    task: str = _opt("binary", "'binary' colored MNIST (digit >= 5, colour flipped with probability e), "
                               "'multiclass' colored MNIST (10 classes, class-specific colours) or 'irm': IRM's "
                               "colored MNIST (Arjovsky et al. 2019: 2 x 14 x 14 images, 25% label noise, an MLP; "
                               "each client belongs to one of the 'environments').",
                     choices=("binary", "multiclass", "irm"))
    data_dir: str = _opt("", "Folder with the four MNIST IDX .gz files (offline); '' = download with "
                             "torchvision into ~/.cache/fedgma.")
    preprocessing: str = _opt("clean", "'clean' (pixels in [0, 1], colour by label) or 'seed-repo': the seed "
                                       "repository's quirks (raw 0-255 pixels, a reshape that scrambles the "
                                       "picture, digit 5 always green, every test colour reversed; binary only).",
                              choices=("clean", "seed-repo"))
    partitioner: str = _opt("pathological", "How training data is split across clients.",
                            choices=("pathological", "iid", "dirichlet"))
    classes_per_client: int = _opt(2, "Digits per client for the pathological partitioner.", low=1, high=10)
    dirichlet_alpha: float = _opt(0.5, "Concentration of the dirichlet partitioner.", low=0.0, low_open=True)
    flip_low: float = _opt(0.1, "Lowest per-client colour flip probability e_k (binary task).", low=0.0, high=1.0)
    flip_high: float = _opt(0.2, "Highest per-client colour flip probability e_k (binary task).", low=0.0, high=1.0)
    ood_flip: float = _opt(0.9, "Colour flip probability of the OOD test set (binary task).", low=0.0, high=1.0)
    id_flip: float = _opt(0.15, "Colour flip probability of the in-distribution test set.", low=0.0, high=1.0)
    environments: str = _opt("0.1,0.2", "Task 'irm': the training environments' colour flip probabilities, "
                                        "comma-separated; client k belongs to environment k mod their number "
                                        "(IRM: 0.1,0.2).")
    train_validation_examples: int = _opt(0, "Training-domain validation set: this many MNIST training images, "
                                             "drawn by the seed, are held out from every client and coloured like "
                                             "the clients' data; evaluated every round (0 = none).", low=0,
                                          high=30000)
    test_validation_examples: int = _opt(0, "Test-domain validation set (oracle selection): the last this-many "
                                            "MNIST test images, coloured like the OOD test set; the test sets use "
                                            "only the images before them (0 = none).", low=0, high=5000)
    max_client_examples: int = _opt(0, "Keep at most this many examples per client (0 = all).", low=0, high=60000)
    max_test_examples: int = _opt(0, "Keep at most this many test examples per test set (0 = all 10,000).", low=0,
                                  high=10000)
    # --- local training (clients) -----------------------------------------------
    local_epochs: int = _opt(1, "Local epochs E per round.", low=1, high=MAX_COUNT)
    batch_size: int = _opt(64, "Local mini-batch size B (0 = full batch, as in the seed repository; at most "
                               "60,000, the whole training set).", low=0, high=60000)
    optimizer: str = _opt("adam", "Local optimizer.", choices=("adam", "sgd"))
    lr: float = _opt(1e-3, "Local learning rate.", low=0.0, low_open=True)
    precision: str = _opt("fp32", "'fp32', or 'bf16': convolutions and linear layers in bfloat16 under "
                                  "autocast, weights and Adam state in fp32 (on CPUs with bf16 units about 0.67x "
                                  "the round time; without them, as on AVX2-only CPUs, torch emulates bf16 and it "
                                  "is slower than fp32, which the run says; same accuracy within seed noise in the "
                                  "runs measured, docs/performance.md).", choices=("fp32", "bf16"))
    device: str = _opt("auto", "Where clients train and the server evaluates: 'auto' (CUDA when torch sees a GPU, "
                               "else the CPU), 'cpu' or 'cuda' ('cuda' without a GPU stops the run before round 1).",
                       choices=("auto", "cpu", "cuda"))
    client_threads: int = _opt(0, "Torch threads per client (0 = the CPUs Ray gave the client, "
                                   "or all cores outside Ray).", low=0, high=1024)
    # --- sampling -----------------------------------------------------------------
    fraction_train: float = _opt(1.0, "Fraction of clients that train each round.", low=0.0, high=1.0,
                                 low_open=True)
    fraction_evaluate: float = _opt(0.0, "Fraction of clients that report local accuracy each round "
                                         "(0 = only the server's centralised evaluation).",
                                    low=0.0, high=1.0)
    round_timeout: float = _opt(3600.0, "Seconds the server waits for a round's replies; clients that have "
                                        "not replied by then count as failed.", low=0.0, low_open=True)
    min_accepted_fraction: float = _opt(0.0, "A round counts only if at least this fraction of the clients asked "
                                              "to train sent an accepted reply (always at least one); otherwise "
                                              "the previous model is kept.", low=0.0, high=1.0)
    reproducible_sampling: bool = _opt(True, "With fraction-train or fraction-evaluate below 1, sample the same "
                                             "clients in every run with one seed: in simulation the nodes are "
                                             "taken in the order the engine registered them (partition order, "
                                             "read once, no message); real SuperNodes are each asked for their "
                                             "partition id once, 500 at a time (false: Flower's own sampling, "
                                             "which differs between runs).")
    min_available_nodes: int = _opt(2, "Wait until this many clients are connected before sampling "
                                       "(Flower's min_available_nodes).", low=1, high=MAX_COUNT)
    max_examples: float = _opt(0.0, "Count at most this many examples for one reply: a larger 'num-examples' is "
                                    "clipped to it, counted (replies-clipped) and named (0 = no cap).", low=0.0)
    max_update_norm: float = _opt(0.0, "Scale a reply whose update ||w_k - w_t|| (L2 over all layers; FedGMA's "
                                       "gradient from 0) exceeds this down to it, counted and named (0 = no bound).",
                                  low=0.0)
    # --- differential privacy --------------------------------------------------------
    dp: str = _opt("none", "Differential privacy with Flower's own mechanisms: 'local' (Flower's LocalDpMod on "
                           "each client: its update clipped to dp-clipping-norm, Gaussian noise for (dp-epsilon, "
                           "dp-delta) per round; any server rule, masks included, is post-processing) or 'central' "
                           "(Flower's DifferentialPrivacyServerSideFixedClipping: replies clipped on the server, "
                           "noise dp-noise-multiplier x dp-clipping-norm / clients added to the aggregate; refused "
                           "with a mask: docs/privacy.md).", choices=("none", "local", "central"))
    dp_clipping_norm: float = _opt(1.0, "DP: the L2 norm every client update is clipped to.", low=0.0,
                                   low_open=True)
    dp_epsilon: float = _opt(0.5, "Local DP: epsilon of each client's reply per round (at most 0.99: the Gaussian "
                                  "mechanism's bound that LocalDpMod uses holds for epsilon below 1).", low=0.0,
                             high=0.99, low_open=True)
    dp_delta: float = _opt(1e-5, "Local DP: delta of each client's reply per round.", low=0.0, high=1.0,
                           low_open=True)
    dp_noise_multiplier: float = _opt(1.0, "Central DP: noise standard deviation in units of dp-clipping-norm / "
                                           "clients per round.", low=0.0)
    # --- secure aggregation (legacy app) --------------------------------------------
    secagg: bool = _opt(False, "Secure aggregation with Flower's SecAgg+ (the legacy app, examples/legacy: Flower "
                               "has SecAgg+ on its legacy API only): the server learns the sum of the replies, "
                               "never one client's; the masks come from securely summed signs.")
    secagg_max_weight: float = _opt(0.0, "SecAgg+: the largest num-examples a client may report at full weight "
                                         "(its error grows with it; 0 = max-client-examples if set, else 60,000).",
                                    low=0.0)
    secagg_clipping_range: float = _opt(8.0, "SecAgg+: every sent value times num-examples / secagg-max-weight must "
                                             "lie in [-this, this] (a client whose reply would be clipped refuses "
                                             "it); the error grows with it.", low=0.0, low_open=True)
    secagg_quantization_range: int = _opt(2**22, "SecAgg+: quantization levels (the error shrinks with it; "
                                                 "clients x this must stay below 2^32).", low=2, high=2**31)
    secagg_num_shares: int = _opt(3, "SecAgg+: how many clients hold shares of each client's secrets.", low=3,
                                  high=MAX_COUNT)
    secagg_reconstruction_threshold: int = _opt(2, "SecAgg+: how many shares rebuild a secret (below "
                                                   "secagg-num-shares; a round survives as long as every client "
                                                   "keeps this many live neighbours).", low=2, high=MAX_COUNT)
    # --- strategy -----------------------------------------------------------------
    strategy: str = _opt("fedgma", "Server strategy: 'fedgma' (the workshop version) or one of Flower's "
                                   "Message-API strategies (the robust aggregators fedmedian, fedtrimmedavg, krum, "
                                   "multikrum and bulyan, and qfedavg, included).", choices=STRATEGIES)
    gma: bool = _opt(False, "Apply the journal version's GMA mask on top of the strategy: exact over fedavg, "
                            "fedprox, fedavgm, fedadam, fedyogi, fedadagrad, commuting with fedmedian and "
                            "fedtrimmedavg; refused with krum, multikrum, bulyan, qfedavg and 'fedgma' "
                            "(docs/use-with-flower.md).")
    p: float = _opt(0.7, "FedGMA (workshop) hard-mask threshold on the sign agreement.", low=0.0, high=1.0)
    server_lr: float = _opt(1e-4, "FedGMA server step size eta_s along the masked mean gradient.", low=0.0)
    fedgma_direction: str = _opt("gradient", "What FedGMA masks: the clients' last local 'gradient' (paper) "
                                             "or the 'pseudo-gradient' w_t - w_k (no gradient upload).",
                                 choices=("gradient", "pseudo-gradient"))
    fedgma_control: str = _opt("none", "A matched control for FedGMA's step: 'none' (FedGMA), 'uniform-step' "
                                       "(no mask: every coordinate takes the step scaled by the round's mask "
                                       "density) or 'random-mask' (a random mask with the sign mask's per-layer "
                                       "density).", choices=("none", "uniform-step", "random-mask"))
    mask: str = _opt("soft", "GMA (journal) mask: 'soft' (A_j below tau scales by A_j) or 'hard' (zeroes).",
                     choices=("soft", "hard"))
    tau: float = _opt(0.4, "GMA (journal) threshold on the sign agreement.", low=0.0, high=1.0)
    agreement_weighting: str = _opt("uniform", "Sign agreement over clients 'uniform' (papers) or weighted "
                                               "by 'examples' (declearn's option).",
                                    choices=("uniform", "examples"))
    proximal_mu: float = _opt(0.01, "FedProx proximal term mu.", low=0.0)
    trimmed_beta: float = _opt(0.2, "FedTrimmedAvg: the fraction cut from each end of every coordinate's sorted "
                                    "values (below 0.5: something must remain).", low=0.0, high=0.45)
    num_malicious_nodes: int = _opt(0, "Krum, MultiKrum and Bulyan: the number of hostile clients to tolerate "
                                       "(Bulyan needs at least 4 x this + 3 replies).", low=0, high=10000)
    multikrum_select: int = _opt(1, "MultiKrum: how many of the best-scored replies are averaged.", low=1,
                                 high=10000)
    qfedavg_q: float = _opt(0.1, "QFedAvg: the fairness exponent q (0 weighs clients as FedAvg's update does).",
                            low=0.0)
    server_momentum: float = _opt(0.9, "FedAvgM server momentum.", low=0.0, high=1.0)
    server_momentum_lr: float = _opt(1.0, "FedAvgM server learning rate.", low=0.0, low_open=True)
    fedopt_eta: float = _opt(0.01, "FedAdam/FedYogi/FedAdagrad server learning rate eta.", low=0.0,
                             low_open=True)
    fedopt_beta1: float = _opt(0.9, "FedAdam/FedYogi first-moment decay.", low=0.0, high=1.0)
    fedopt_beta2: float = _opt(0.99, "FedAdam/FedYogi second-moment decay.", low=0.0, high=1.0)
    fedopt_tau: float = _opt(1e-3, "FedAdam/FedYogi/FedAdagrad adaptivity (Flower's tau).", low=0.0,
                             low_open=True)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> Settings:
        """Validate a Flower run config; raise ConfigError naming the first bad key."""
        if not isinstance(run_config, dict):
            raise ConfigError(f"The run config must be a table of keys and values, got a {type(run_config).__name__}.")
        fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in run_config.items():
            if key in RENAMED_KEYS:
                raise ConfigError(f"Run-config key '{key}' is now '{RENAMED_KEYS[key]}' (Flower's name for it); "
                                  f"write {RENAMED_KEYS[key]}={value!r}.")
            if key not in fields:
                close = [TEMPLATE_NAMES[key]] if key in TEMPLATE_NAMES else difflib.get_close_matches(key, fields, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                if key in TEMPLATE_NAMES:
                    hint += f" (Flower's app templates call it {key}; this app's name is older)"
                raise ConfigError(f"Unknown run-config key '{key}'.{hint} Known keys: {', '.join(sorted(fields))}.")
            values[fields[key].name] = _check(key, value, fields[key])
        settings = cls(**values)
        if settings.flip_low > settings.flip_high:
            raise ConfigError(f"Run-config key 'flip-low' ({settings.flip_low}) must not exceed "
                              f"'flip-high' ({settings.flip_high}).")
        if settings.preprocessing == "seed-repo" and settings.task != "binary":
            raise ConfigError("Run-config key 'preprocessing' = 'seed-repo' needs task='binary' (the seed "
                              "repository has only the binary task).")
        environment_flips(settings.environments)  # raises ConfigError naming the key
        tracking_tools(settings.tracking)  # the same
        if settings.fedgma_control != "none" and settings.strategy != "fedgma":
            raise ConfigError(f"Run-config key 'fedgma-control' = {settings.fedgma_control!r} needs "
                              "strategy='fedgma' (it replaces FedGMA's mask).")
        _check_privacy(settings)
        _check_secagg(settings)
        if settings.gma and settings.strategy == "fedgma":
            raise ConfigError("Run-config key 'gma' must be false with strategy='fedgma' "
                              "(FedGMA masks already); use gma=true with fedavg, fedprox, fedavgm, "
                              "fedadam, fedyogi or fedadagrad.")
        return settings

    def to_run_config(self) -> dict[str, Any]:
        """The settings as a flat kebab-case dict (for metrics.json and ConfigRecords)."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(key, default, meaning) for every key, in declaration order (used by docs tests)."""
        return [(f.name.replace("_", "-"), f.default, f.metadata["help"]) for f in dataclasses.fields(cls)]


def _check_privacy(settings: Settings) -> None:
    """Refuse the privacy combinations whose guarantee the code cannot give (docs/privacy.md)."""
    masked = settings.gma or settings.strategy == "fedgma"
    if settings.dp == "central" and masked:
        raise ConfigError("Run-config key 'dp' = 'central' cannot be combined with a mask (gma=true or "
                          "strategy='fedgma'): the mask is computed from the clients' un-noised updates, so one "
                          "client can move coordinates across the threshold and the mask itself is not covered by "
                          "the central-DP guarantee. Use dp='local' (masking the privatized replies is "
                          "post-processing) or no mask.")
    if settings.dp == "local" and settings.strategy == "fedgma" and settings.fedgma_direction == "gradient":
        raise ConfigError("Run-config key 'dp' = 'local' needs fedgma-direction='pseudo-gradient' with "
                          "strategy='fedgma': Flower's LocalDpMod privatizes the weights only, and the gradient "
                          "FedGMA would ask for would leave the client in the clear.")


#: The strategies whose aggregate is a (weighted) mean, which is all that secure aggregation reveals.
MEAN_STRATEGIES = ("fedgma", "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def _check_secagg(settings: Settings) -> None:
    """Refuse what secure aggregation cannot do: aggregators that need each reply, or a bad share setting."""
    if not settings.secagg:
        return
    if settings.strategy not in MEAN_STRATEGIES:
        raise ConfigError(f"Run-config key 'secagg' is true, but strategy={settings.strategy!r} needs every "
                          "client's reply and SecAgg+ reveals only their sum; use one of "
                          f"{', '.join(MEAN_STRATEGIES)}.")
    if settings.secagg_reconstruction_threshold >= settings.secagg_num_shares:
        raise ConfigError(f"Run-config key 'secagg-reconstruction-threshold' ({settings.secagg_reconstruction_threshold}) "
                          f"must be below 'secagg-num-shares' ({settings.secagg_num_shares}).")


def environment_flips(environments: str) -> tuple[float, ...]:
    """The run-config key 'environments' ("0.1,0.2") as flip probabilities, checked."""
    try:
        flips = tuple(float(part) for part in environments.split(","))
    except ValueError:
        flips = ()
    if not flips or not all(0.0 <= flip <= 1.0 for flip in flips):
        raise ConfigError(f"Run-config key 'environments' is {environments!r}; it must be comma-separated colour "
                          "flip probabilities in [0, 1], e.g. '0.1,0.2'.")
    return flips


#: The tools the run-config key 'tracking' may name (fedgma/tracking.py logs to them).
TRACKING_TOOLS = ("tensorboard", "wandb", "mlflow")


def tracking_tools(tracking: str) -> tuple[str, ...]:
    """The run-config key 'tracking' ("tensorboard,mlflow", or "none") as the tools it names, checked."""
    if tracking.strip() == "none":
        return ()
    tools = [part.strip() for part in tracking.split(",")]
    for tool in tools:
        if tool not in TRACKING_TOOLS:
            close = difflib.get_close_matches(tool, TRACKING_TOOLS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"Run-config key 'tracking' names {tool!r}{hint}; it must be 'none' or a "
                              f"comma-separated list of {', '.join(TRACKING_TOOLS)}.")
    return tuple(dict.fromkeys(tools))


#: Keys renamed since runs were first recorded: old name -> today's (Flower's templates call the round count
#: num-server-rounds). Records and checkpoints written under an old name still read (``current_keys``).
RENAMED_KEYS = {"num-rounds": "num-server-rounds"}
#: Keys of Flower's app templates (quickstart-pytorch's pyproject: num-server-rounds, fraction-evaluate,
#: local-epochs, learning-rate, batch-size; older templates' fraction-fit) that this app names otherwise.
TEMPLATE_NAMES = {"learning-rate": "lr", "fraction-fit": "fraction-train"}


def current_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded run config (metrics.json's ``config``, a checkpoint's) with every renamed key under today's name."""
    return {RENAMED_KEYS.get(key, key): value for key, value in config.items()}


#: Today's default of every key: what a run made before a key existed ran with (the
#: keys added since all default to the behaviour from before they existed).
DEFAULT_RUN_CONFIG = Settings().to_run_config()


def _check(key: str, value: Any, spec: dataclasses.Field) -> Any:
    """Type- and range-check one value against its field declaration."""
    expected = {"int": int, "float": float, "str": str, "bool": bool}[spec.type]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"Run-config key '{key}' must be a {spec.type}, got {value!r} "
                          f"({type(value).__name__}).")
    meta = spec.metadata
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"Run-config key '{key}' is {value!r}; it must be a finite number.")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"Run-config key '{key}' is {value!r}; allowed values: "
                          f"{', '.join(repr(c) for c in meta['choices'])}.")
    low, high = meta["low"], meta["high"]
    if low is not None and (value < low or (meta["low_open"] and value == low)):
        bound = f"> {low}" if meta["low_open"] else f">= {low}"
        raise ConfigError(f"Run-config key '{key}' is {value!r}; it must be {bound}"
                          + (f" and <= {high}." if high is not None else "."))
    if high is not None and value > high:
        raise ConfigError(f"Run-config key '{key}' is {value!r}; it must be <= {high}.")
    return value
