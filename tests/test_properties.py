"""Property-based: thousands of generated run configs and client replies either pass or fail with the named
error, never a raw exception, and the global model stays finite (Hypothesis, derandomized for CI)."""

import math
import re

import numpy as np
import pytest
from conftest import reply, send
from hypothesis import HealthCheck, given, settings, strategies as st

from fedgma.strategies.records import decode
from fedgma.settings import ConfigError, Settings
from fedgma.registry import build_strategy

KEYS = [key for key, _, _ in Settings.describe()]
#: How many cases each property tries (the README's fault table quotes the total).
CONFIG_CASES, REPLY_CASES = 3000, 600

values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["fedavg", "fedgma", "krum", "soft", "hard", "binary", "irm", "iid", "local", "0.1,0.2", ""]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
configs = st.one_of(st.dictionaries(st.sampled_from(KEYS + ["stratgy", "p-value", ""]), values, max_size=8),
                    st.lists(st.integers(), max_size=2), st.text(max_size=5), st.none())


@settings(max_examples=CONFIG_CASES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_any_run_config_passes_or_names_a_key(config):
    try:
        Settings.from_run_config(config)
    except ConfigError as problem:
        message = str(problem)
        assert re.search(r"'[a-z0-9-]*'", message) or "run config must be a table" in message, message


arrays = st.builds(lambda shape, fill, dtype: np.full(shape, fill, dtype=dtype),
                   st.sampled_from([(4,), (3,), (2, 2), ()]),
                   st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([np.float32, np.float64, np.float16, np.int32]))
examples = st.one_of(st.integers(min_value=-5, max_value=10**15), st.floats(allow_nan=True, allow_infinity=True),
                     st.booleans(), st.text(max_size=3))
#: Any metric name but the parameter names of the tests' reply() helper, which takes the metrics as keywords.
metric_names = st.text(max_size=8).filter(lambda name: name not in ("instruction", "weights", "num_examples",
                                                                     "gradient"))
replies = st.lists(st.tuples(st.dictionaries(st.sampled_from(["w", "b", "x"]), arrays, min_size=1, max_size=3),
                             examples, st.dictionaries(metric_names, st.floats(), max_size=3)),
                   min_size=1, max_size=4)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # NaN into int arrays
@settings(max_examples=REPLY_CASES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(replies, st.sampled_from([{"strategy": "fedavg"}, {"strategy": "fedgma", "fedgma-direction": "pseudo-gradient"},
                                 {"strategy": "fedadam", "gma": True}, {"strategy": "fedmedian", "gma": True},
                                 {"strategy": "fedavg", "max-examples": 100.0, "max-update-norm": 1.0}]))
def test_any_reply_is_accepted_or_counted_and_the_model_stays_finite(generated, keys):
    strategy = build_strategy(Settings.from_run_config(keys | {"min-available-nodes": 1}))
    reference = {"w": np.zeros(4, np.float32)}
    instructions = send(strategy, reference, node_ids=tuple(range(1, len(generated) + 1)))
    messages = []
    for instruction, (weights, num_examples, metrics) in zip(instructions, generated):
        try:
            messages.append(reply(instruction, weights, num_examples, **metrics))
        except (TypeError, ValueError):  # Flower itself refuses to build such a record: nothing reaches us
            messages.append(reply(instruction, reference, 1))
    arrays, metrics = strategy.aggregate_train(1, messages)
    counted = metrics["replies-accepted"] + metrics["replies-rejected"] + metrics["replies-failed"]
    assert counted == len(messages)
    if arrays is not None:
        assert all(np.isfinite(a).all() for a in decode(arrays).values())
        assert all(not isinstance(v, float) or math.isfinite(v) for v in metrics.values())
