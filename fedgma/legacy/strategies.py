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

* :class:`LegacyGMA` wraps FedAvg, FedProx, FedAvgM, FedAdam, FedYogi or FedAdagrad
  (legacy): it hands the wrapped strategy one result holding the masked mean
  w_t + m * (w_bar - w_t) with the clients' total number of examples, whose
  weighted mean is itself, so the wrapped server update runs on the masked mean.
* :class:`LegacyFedGMA` is the workshop algorithm. Legacy results carry one list
  of arrays, so with ``direction="gradient"`` it asks clients (fit config
  ``append-gradient``) to return their last local gradient after their weights.

With ``secagg`` (a :class:`~fedgma.strategies.secagg.SecAggPlus`, for a server app
that runs Flower's ``SecAggPlusWorkflow``) the strategies receive only securely
summed means: the clients append their sign arrays, every result carries the same
mean, and the masks are computed from the means and sign sums alone. The guard
then accepts a round only if all results are that one sum, so a round in which
any client's own arrays reached the strategy is refused, not aggregated.
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common import (Code, FitIns, FitRes, Parameters, Scalar, Status, ndarrays_to_parameters,
                         parameters_to_ndarrays)
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg, Strategy

from fedgma.strategies.arguments import check_choice, check_fraction
from fedgma.strategies.masking import (direction_of_means, fedgma_layer, fedgma_masked, gma_layer, gma_masked,
                                      mask_statistics)
from fedgma.strategies.protocol import APPEND_GRADIENT, PARTITION_ID
from fedgma.strategies.replies import (ScreenedReplies, check_arrays, check_metrics, check_num_examples,
                                       short_reason)
from fedgma.strategies.secagg import SecAggPlus

Result = tuple[ClientProxy, FitRes]


class LegacyGuard(Strategy):
    """Screens, orders and counts legacy fit results before ``aggregate_accepted``.

    ``train_metrics`` and ``notes`` per round (counts, mask statistics, reasons)
    serve the same bookkeeping as :class:`~fedgma.strategies.ReplyGuard`.
    """

    appends_gradient = False  # clients append their last gradients after their weights
    signs: str | None = None  # what a masking subclass needs the signs of under SecAgg+ ("update", "gradient")
    weighted_agreement = False

    def __init__(self, strategy: Strategy, secagg: SecAggPlus | None = None) -> None:
        self.strategy = strategy
        self.secagg = secagg
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
        return parameters, dict(metrics or {}) | _mean_metrics(accepted)

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
    """GMA (journal version) around a legacy FedAvg-family strategy; see :class:`fedgma.strategies.GMA`."""

    signs = "update"

    def __init__(self, strategy: FedAvg, tau: float = 0.4, mask: str = "soft",
                 weighted_agreement: bool = False, secagg: SecAggPlus | None = None) -> None:
        if not isinstance(strategy, FedAvg):
            raise TypeError(f"LegacyGMA wraps legacy FedAvg-family strategies, got {type(strategy).__name__}")
        super().__init__(strategy, secagg)
        self.tau = check_fraction("LegacyGMA threshold tau", tau)
        self.mask = check_choice("LegacyGMA mask", mask, ("soft", "hard"))
        self.weighted_agreement = weighted_agreement

    def aggregate_accepted(self, server_round, accepted, failures):
        weights = [res.num_examples for (_, res), _ in accepted]
        if self.secagg is not None:
            summed = accepted[0][1]
            layers = {str(i): gma_masked(reference, summed[i], agreement, self.tau, self.mask)
                      for i, (reference, agreement) in enumerate(zip(self.current, self.secure_agreements(accepted)))}
        else:
            layers = {str(i): gma_layer(reference, [arrays[i] for _, arrays in accepted], weights, self.tau,
                                        self.mask, weights if self.weighted_agreement else None)
                      for i, reference in enumerate(self.current)}
        (proxy, first), _ = accepted[0]
        masked_mean = ndarrays_to_parameters([layer.weights for layer in layers.values()])
        aggregate = FitRes(Status(Code.OK, "masked mean"), masked_mean, int(sum(weights)), {})
        parameters, inner = self.strategy.aggregate_fit(server_round, [(proxy, aggregate)], [])
        log(INFO, "LegacyGMA: masked mean of %d results goes to %s", len(accepted), type(self.strategy).__name__)
        return parameters, dict(inner or {}) | _mean_metrics(accepted) | mask_statistics(self.references, layers)


class LegacyFedGMA(LegacyGuard):
    """FedGMA (workshop version) on the legacy API; see :class:`fedgma.strategies.FedGMA`."""

    def __init__(self, fedavg: FedAvg, p: float = 0.7, server_lr: float = 1e-4, direction: str = "gradient",
                 weighted_agreement: bool = False, secagg: SecAggPlus | None = None) -> None:
        if server_lr < 0:
            raise ValueError(f"LegacyFedGMA server_lr must be >= 0, got {server_lr}")
        super().__init__(fedavg, secagg)
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
        if self.secagg is not None:
            summed = accepted[0][1]
            parts = [direction_of_means(reference, summed[i], summed[count + i] if self.appends_gradient else None,
                                        agreement)
                     for i, (reference, agreement) in enumerate(zip(self.current, self.secure_agreements(accepted)))]
            layers = {str(i): fedgma_masked(part, self.p, self.server_lr) for i, part in enumerate(parts)}
        else:
            layers = {}
            for i, reference in enumerate(self.current):
                gradients = [arrays[count + i] for _, arrays in accepted] if self.appends_gradient else None
                layers[str(i)] = fedgma_layer(reference, [arrays[i] for _, arrays in accepted], weights, self.p,
                                              self.server_lr, gradients, weights if self.weighted_agreement else None)
        return (ndarrays_to_parameters([layer.weights for layer in layers.values()]),
                _mean_metrics(accepted) | mask_statistics(self.references, layers))
