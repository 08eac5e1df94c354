"""The tooling: experiment grids and reports, benchmarks, deployment helpers, the local Flower helpers.

It imports the library (:mod:`fedgma.strategies`) and the app; neither imports it.
"""
