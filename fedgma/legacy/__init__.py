"""The colored-MNIST app on Flower's legacy API (``DefaultWorkflow``, ``flwr.server.strategy``), with SecAgg+.

:mod:`.strategies` holds FedGMA and GMA for legacy strategies; :mod:`.app` the legacy server and client apps.
Both share the strategy table (:mod:`fedgma.registry`) and the reply checks
(:mod:`fedgma.strategies.replies`) with the Message-API path.
"""
