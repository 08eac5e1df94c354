"""FedGMA and GMA for Flower's legacy strategy API (``flwr.server.strategy``).

For server apps written with ``ServerApp(server_fn=...)`` and the legacy
strategies (all of Flower's published baselines). Same math as the Message-API
strategies (the per-layer functions of :mod:`fedgma.strategies.masking`) and the
same reply checks (:func:`~fedgma.strategies.replies.check_arrays`,
:func:`~fedgma.strategies.replies.check_metrics`,
:func:`~fedgma.strategies.replies.check_num_examples`, counted in a
:class:`~fedgma.strategies.replies.ScreenedReplies`): failures and malformed
results are counted with their reasons and never aggregated. The legacy round loop
cannot start at a later round, so these strategies keep no resumable state.

* :class:`LegacyGMA` wraps the legacy FedAvg, FedProx, FedAvgM, FedAdam, FedYogi,
  FedAdagrad (exact GMA), FedMedian or FedTrimmedAvg (commuting), as
  :mod:`fedgma.strategies.composition` defines: it hands the wrapped strategy's
  ``aggregate_fit`` every accepted result, trainable arrays rewritten to
  w_t + m * (w_k - w_t), metrics untouched (so ``fit_metrics_aggregation_fn``
  sees the real ones).
* :class:`LegacyFedGMA` is the workshop algorithm over the legacy FedAvg or
  FedProx: their ``aggregate_fit`` gives w_bar, and the masked step is added to the
  trainable arrays. Legacy results carry one list of arrays, so with
  ``direction="gradient"`` it asks clients (fit config ``append-gradient``) to
  return their last local gradient after their weights.

Legacy arrays have no names, so the default rule (:mod:`fedgma.strategies.trainable`)
can only tell floating-point arrays from integer and 0-d ones: a model with
BatchNorm passes ``trainable=`` the indices (as strings) of its parameters.

With ``secagg`` (a :class:`~fedgma.strategies.secagg.SecAggPlus`, for a server app
that runs Flower's ``SecAggPlusWorkflow``) the strategies receive only securely
summed means: the clients append their sign arrays, every result carries the same
mean, and the masks are computed from the means and sign sums alone. The guard
then accepts a round only if all results are that one sum, so a round in which
any client's own arrays reached the strategy is refused, not aggregated.
"""

from __future__ import annotations

from logging import WARNING
from typing import Any

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedgma.strategies.arguments import check_choice, check_fraction, check_step
from fedgma.strategies.composition import check_fedgma_strategy, check_weighted_agreement, gma_aggregation
from fedgma.strategies.masking import (MaskedLayer, apply_mask_to_update, direction_of_means, fedgma_direction, fedgma_masked,
                                      gma_layer, gma_masked, mask_statistics)
from fedgma.strategies.protocol import APPEND_GRADIENT, PARTITION_ID
from fedgma.strategies.replies import (ScreenedReplies, check_arrays, check_metrics, check_num_examples,
                                       short_reason)
from fedgma.strategies.secagg import SecAggPlus
from fedgma.strategies.trainable import Trainable, trainable_names, trainable_rule

Result = tuple[ClientProxy, FitRes]


class LegacyGuard(Strategy):
    """Screens, orders and counts legacy fit results before ``aggregate_accepted``.

    ``train_metrics`` and ``notes`` per round (counts, mask statistics, reasons)
    serve the same bookkeeping as :class:`~fedgma.strategies.ReplyGuard`.
    """

    appends_gradient = False  # clients append their last gradients after their weights
    signs: str | None = None  # what a masking subclass needs the signs of under SecAgg+ ("update", "gradient")
    weighted_agreement = False

    def __init__(self, strategy: Strategy, secagg: SecAggPlus | None = None, trainable: Trainable = None) -> None:
        self.strategy = strategy
        self.secagg = secagg
        self.trainable = trainable_rule(trainable)
        self.current: list[np.ndarray] = []
        self.sent = 0
        self.train_metrics: dict[int, dict[str, Scalar]] = {}
        self.evaluate_metrics: dict[int, dict[str, Scalar]] = {}
        self.notes: dict[int, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.strategy).__name__})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self.current = parameters_to_ndarrays(parameters)
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        self.sent = len(instructions)
        if self.secagg is not None:
            for _, fit_ins in instructions:
                fit_ins.config.update(self.secagg.fit_config(self.signs, uniform=not self.weighted_agreement))
        return instructions

    @property
    def parts(self) -> tuple[str, ...]:
        """What a result holds, one array per layer each, in order: weights, gradients, signs."""
        return (("parameters",) + ("gradient",) * self.appends_gradient
                + ("signs",) * (self.secagg is not None and self.signs is not None))

    def aggregate_fit(self, server_round: int, results: list[Result],
                      failures: list[Result | BaseException]) -> tuple[Parameters | None, dict[str, Scalar]]:
        screened, accepted = self._screen(results, failures)
        parameters, metrics, outcome = None, {}, "aggregated"
        if not accepted:
            outcome = f"kept the previous model: 0 of {self.sent} replies accepted"
        else:
            parameters, metrics = self.aggregate_accepted(server_round, accepted, failures)
            arrays = parameters_to_ndarrays(parameters) if parameters is not None else None
            if arrays is None or not all(np.isfinite(a).all() for a in arrays):
                parameters, outcome = None, "kept the previous model: no finite aggregate"
            else:
                parameters = ndarrays_to_parameters([a.astype(r.dtype) for a, r in zip(arrays, self.current)])
        if parameters is None:
            log(WARNING, "Round %d: %s (%s).", server_round, outcome, screened.counts())
        metrics = dict(metrics) | screened.counts()
        self.train_metrics[server_round] = metrics
        self.notes[server_round] = {"outcome": outcome, "reasons": screened.reasons}
        return parameters, metrics

    def aggregate_accepted(self, server_round: int, accepted: list[tuple[Result, list[np.ndarray]]],
                           failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Aggregate the screened results; subclasses mask them first."""
        parameters, metrics = self.strategy.aggregate_fit(server_round, [result for result, _ in accepted], [])
        return parameters, _mean_metrics(accepted) | dict(metrics or {})

    def handed_on(self, accepted: list[tuple[Result, list[np.ndarray]]],
                  parameters: list[list[np.ndarray]]) -> list[Result]:
        """The accepted results with their parameters replaced (one list of arrays each), all else kept."""
        return [(proxy, FitRes(res.status, ndarrays_to_parameters(arrays), res.num_examples, res.metrics))
                for ((proxy, res), _), arrays in zip(accepted, parameters, strict=True)]

    def statistics(self, layers: dict[int, MaskedLayer]) -> dict[str, float]:
        """The round's mask statistics over the masked layers (named by index)."""
        return mask_statistics(self.references, {str(i): m for i, m in layers.items()})

    @property
    def trainable_layers(self) -> list[int]:
        """The indices of the round's trainable arrays (the ones masked)."""
        return [int(name) for name in trainable_names(self.references, self.trainable)]

    def secure_agreements(self, accepted: list[tuple[Result, list[np.ndarray]]]) -> list[np.ndarray]:
        """Per layer, the sign agreement from the securely summed signs (the last part of every result)."""
        total = sum(res.num_examples for (_, res), _ in accepted)
        return [self.secagg.agreement(sign_mean, total, len(accepted), uniform=not self.weighted_agreement)
                for sign_mean in accepted[0][1][-len(self.current):]]

    @property
    def references(self) -> dict[str, np.ndarray]:
        """The round's global arrays by layer name ("0", "1", ...: the legacy API has no names)."""
        return {str(i): array for i, array in enumerate(self.current)}

    def _screen(self, results: list[Result], failures: list) -> tuple[ScreenedReplies, list]:
        """Accepted (result, arrays) pairs in partition (then client id) order, and the counts."""
        screened = ScreenedReplies()
        failures = _distinct(failures)
        for failure in failures:
            reason = str(failure) if isinstance(failure, BaseException) else failure[1].status.message
            screened.fail(f"a client failed: {short_reason(reason)}")
        for _ in range(max(0, self.sent - len(results) - len(failures))):
            screened.fail("a client did not reply before the round timeout")
        reference = self.references
        names = list(reference)
        accepted = []
        for proxy, fit_res in results:
            try:
                arrays = parameters_to_ndarrays(fit_res.parameters)
                if len(arrays) != len(names) * len(self.parts):
                    raise ValueError(f"it holds {len(arrays)} arrays, expected {len(names) * len(self.parts)}")
                if self.secagg is not None:  # SecAgg+ hands over float64 means of the float32 arrays
                    arrays = [a.astype(self.current[i % len(names)].dtype) for i, a in enumerate(arrays)]
                for part, kind in enumerate(self.parts):
                    check_arrays(kind, dict(zip(names, arrays[part * len(names):(part + 1) * len(names)])), reference)
                check_metrics(fit_res.metrics)
                check_num_examples(fit_res.num_examples)
                accepted.append(((proxy, fit_res), arrays))
            except ValueError as problem:
                screened.reject(f"client {proxy.cid} rejected: {problem}")
        if self.secagg is not None and not _one_sum([arrays for _, arrays in accepted]):
            for (proxy, _), _ in accepted:
                screened.reject(f"client {proxy.cid} rejected: secagg is on, but the replies differ, so they were "
                                "not securely summed (the client app lacks secaggplus_mod?)")
            accepted = []
        accepted.sort(key=lambda item: (item[0][1].metrics.get(PARTITION_ID, float("inf")), item[0][0].cid))
        screened.accepted = accepted
        return screened, accepted

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        loss, metrics = self.strategy.aggregate_evaluate(server_round, results, failures)
        self.evaluate_metrics[server_round] = dict(metrics) | {"evaluate-replies-accepted": len(results),
                                                               "evaluate-replies-failed": len(failures)}
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Parameters):
        if server_round > 0 and server_round not in self.train_metrics:  # aggregate_fit was never called
            outcome = ("kept the previous model: the round ended without aggregation (no reply reached the "
                       "strategy; under SecAgg+, Flower's workflow halts a round without an error when too few "
                       "clients remain: see the server log)")
            log(WARNING, "Round %d: %s.", server_round, outcome)
            self.train_metrics[server_round] = {"replies-accepted": 0}
            self.notes[server_round] = {"outcome": outcome, "reasons": []}
        return self.strategy.evaluate(server_round, parameters)


def _one_sum(replies: list[list[np.ndarray]]) -> bool:
    """Whether every reply holds the same arrays (SecAgg+ hands each result the one secure sum)."""
    return all(all(np.array_equal(a, b) for a, b in zip(arrays, replies[0])) for arrays in replies[1:])


def _distinct(failures: list) -> list:
    """The failures, each once: SecAggPlusWorkflow reports a client's failed masked-vector reply twice, as two
    exceptions around the same error object."""
    seen, distinct = set(), []
    for failure in failures:
        key = id(failure.args[0]) if isinstance(failure, BaseException) and failure.args else id(failure)
        if key not in seen:
            seen.add(key)
            distinct.append(failure)
    return distinct


def _mean_metrics(accepted: list[tuple[Result, list[np.ndarray]]]) -> dict[str, Scalar]:
    """Example-weighted mean of the clients' numeric fit metrics."""
    total = sum(res.num_examples for (_, res), _ in accepted)
    keys = {k for (_, res), _ in accepted for k, v in res.metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != PARTITION_ID}
    return {k: sum(res.num_examples * float(res.metrics.get(k, 0.0)) for (_, res), _ in accepted) / total
            for k in sorted(keys)}


class LegacyGMA(LegacyGuard):
    """GMA (journal version) around a legacy strategy; see :class:`fedgma.strategies.GMA` (same parameters)."""

    signs = "update"

    def __init__(self, strategy: Strategy, tau: float = 0.4, mask: str = "soft", weighted_agreement: bool = False,
                 secagg: SecAggPlus | None = None, trainable: Trainable = None, aggregation: str | None = None) -> None:
        self.aggregation = gma_aggregation(strategy, aggregation)
        check_weighted_agreement("LegacyGMA", strategy, self.aggregation, weighted_agreement)
        super().__init__(strategy, secagg, trainable)
        self.tau = check_fraction("LegacyGMA threshold tau", tau)
        self.mask = check_choice("LegacyGMA mask", mask, ("soft", "hard"))
        self.weighted_agreement = weighted_agreement

    def aggregate_accepted(self, server_round, accepted, failures):
        weights = [res.num_examples for (_, res), _ in accepted]
        count, layers = len(self.current), {}
        if self.secagg is not None:  # every result holds the one secure sum: its means, then the sign sums
            summed, agreements = accepted[0][1], self.secure_agreements(accepted)
            for i in self.trainable_layers:
                layers[i] = gma_masked(self.current[i], summed[i], agreements[i], self.tau, self.mask)
            masked = [[layers[i].weights if i in layers else summed[i] for i in range(count)]] * len(accepted)
        else:
            for i in self.trainable_layers:
                layers[i] = gma_layer(self.current[i], [arrays[i] for _, arrays in accepted], weights, self.tau,
                                      self.mask, weights if self.weighted_agreement else None)
            masked = [[apply_mask_to_update(self.current[i], arrays[i], layers[i].mask) if i in layers
                       else arrays[i] for i in range(count)] for _, arrays in accepted]
        parameters, inner = self.strategy.aggregate_fit(server_round, self.handed_on(accepted, masked), [])
        return parameters, _mean_metrics(accepted) | dict(inner or {}) | self.statistics(layers)


class LegacyFedGMA(LegacyGuard):
    """FedGMA (workshop version) on the legacy API; see :class:`fedgma.strategies.FedGMA` (same parameters)."""

    def __init__(self, fedavg: Strategy, p: float = 0.8, server_lr: float = 0.5, direction: str = "pseudo-gradient",
                 weighted_agreement: bool = False, secagg: SecAggPlus | None = None, trainable: Trainable = None,
                 aggregation: str | None = None) -> None:
        check_fedgma_strategy(fedavg, aggregation)
        check_step("LegacyFedGMA server_lr", server_lr)
        super().__init__(fedavg, secagg, trainable)
        self.p = check_fraction("LegacyFedGMA threshold p", p)
        self.direction = check_choice("LegacyFedGMA direction", direction, ("gradient", "pseudo-gradient"))
        self.server_lr, self.weighted_agreement = server_lr, weighted_agreement
        self.appends_gradient = direction == "gradient"
        self.signs = "gradient" if self.appends_gradient else "update"

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = super().configure_fit(server_round, parameters, client_manager)
        for _, fit_ins in instructions:
            fit_ins.config[APPEND_GRADIENT] = self.direction == "gradient"
        return instructions

    def aggregate_accepted(self, server_round, accepted, failures):
        weights = [res.num_examples for (_, res), _ in accepted]
        count = len(self.current)
        mean, inner = self.strategy.aggregate_fit(server_round,
                                                  self.handed_on(accepted, [a[:count] for _, a in accepted]), [])
        if mean is None:
            return None, dict(inner or {})
        mean, layers = parameters_to_ndarrays(mean), {}
        agreements = self.secure_agreements(accepted) if self.secagg is not None else None
        summed = accepted[0][1]  # under SecAgg+: the secure sum's means, gradients and sign sums
        for i in self.trainable_layers:
            if self.secagg is not None:
                part = direction_of_means(self.current[i], mean[i],
                                          summed[count + i] if self.appends_gradient else None, agreements[i])
            else:
                gradients = [arrays[count + i] for _, arrays in accepted] if self.appends_gradient else None
                part = fedgma_direction(self.current[i], [arrays[i] for _, arrays in accepted], weights, gradients,
                                        weights if self.weighted_agreement else None, mean_weights=mean[i])
            layers[i] = fedgma_masked(part, self.p, self.server_lr)
        new = [layers[i].weights.astype(mean[i].dtype) if i in layers else mean[i] for i in range(count)]
        return (ndarrays_to_parameters(new),
                _mean_metrics(accepted) | dict(inner or {}) | self.statistics(layers))
