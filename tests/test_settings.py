"""Run-config validation and the documentation that must match it."""

import pytest
import tomllib
from conftest import REPO

from fedgma.checkpoint import Checkpoint, check_resumable
from fedgma.settings import ConfigError, Settings, current_keys
from fedgma.tools import check_config


@pytest.mark.parametrize("override, message", [
    ({"strategy": "fedfoo"}, "'strategy' is 'fedfoo'; allowed values: 'fedgma'"),
    ({"p": 1.5}, "'p' is 1.5; it must be <= 1.0"),
    ({"tau": -0.1}, "'tau' is -0.1; it must be >= 0.0"),
    ({"lr": -0.01}, "'lr' is -0.01; it must be > 0.0"),
    ({"local-epochs": -1}, "'local-epochs' is -1; it must be >= 1"),
    ({"partitioner": "shards"}, "'partitioner' is 'shards'; allowed values: 'pathological', 'iid', 'dirichlet'"),
    ({"stratgy": "fedavg"}, "Unknown run-config key 'stratgy'. Did you mean 'strategy'?"),
    ({"num-server-rounds": 2.5}, "'num-server-rounds' must be a int"),
    ({"gma": "yes"}, "'gma' must be a bool"),
    ({"flip-low": 0.3}, "'flip-low' (0.3) must not exceed 'flip-high' (0.2)"),
    ({"strategy": "fedgma", "gma": True}, "'gma' must be false with strategy='fedgma'"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as caught:
        Settings.from_run_config(override)
    assert message in str(caught.value)


def test_ints_are_accepted_for_floats():
    assert Settings.from_run_config({"lr": 1}).lr == 1.0


def test_pyproject_config_matches_settings_defaults():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert config == Settings().to_run_config()
    assert Settings.from_run_config(config) == Settings()


def test_docs_document_every_key_with_its_default():
    readme = (REPO / "docs" / "configuration.md").read_text()
    for key, default, _ in Settings.describe():
        shown = f'"{default}"' if isinstance(default, str) else str(default).lower() if isinstance(default, bool) else str(default)
        assert f"| `{key}` | `{shown}` |" in readme, f"docs/configuration.md lacks the row for '{key}' with default {shown}"


def test_ready_made_config_files_are_valid():
    for path in sorted((REPO / "configs").glob("*.toml")):
        Settings.from_run_config(tomllib.loads(path.read_text()))
    assert {"seed-repo.toml", "paper.toml"} <= {p.name for p in (REPO / "configs").glob("*.toml")}


def test_resume_counts_keys_a_checkpoint_lacks_as_their_default():
    """A checkpoint written before a key existed resumes under that key's default, and only then."""
    old = Settings().to_run_config()
    del old["device"]
    checkpoint = Checkpoint(round=3, arrays={}, strategy_state={}, rows=[], config=old, report={}, random_states={})
    check_resumable(checkpoint, Settings())
    with pytest.raises(ConfigError, match="'device': checkpoint 'auto', now 'cpu'"):
        check_resumable(checkpoint, Settings(device="cpu"))


def test_too_few_clients_stop_the_run_instead_of_waiting_forever(monkeypatch):
    import fedgma.server_app as server_app

    class InMemoryGrid:  # the name Flower's simulation grid has: its federation is fixed
        def get_node_ids(self):
            return [1, 2]

    monkeypatch.setattr(server_app, "SIMULATION_NODE_WAIT", 0.2)
    with pytest.raises(ConfigError, match="'min-available-nodes' is 5, but only 2 clients are in this simulation"):
        server_app.wait_for_clients(InMemoryGrid(), 5, timeout=3600, poll=0.05)

    class HttpGrid(InMemoryGrid):  # a deployment: clients may still come, up to the round timeout
        pass

    with pytest.raises(ConfigError, match="within round-timeout"):
        server_app.wait_for_clients(HttpGrid(), 5, timeout=0.2, poll=0.05)
    assert server_app.wait_for_clients(HttpGrid(), 2, timeout=0.2) == 2


@pytest.mark.parametrize("key, value", [("p", float("nan")), ("lr", float("inf")), ("seed", 2**64),
                                        ("num-server-rounds", 10**12), ("batch-size", 10**9),
                                        ("client-threads", 10**6)])
def test_values_that_would_hang_or_crash_a_run_are_refused_by_name(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        Settings.from_run_config({key: value})


@pytest.mark.parametrize("text, message", [
    ("num-rounds=3", "'num-rounds' is now 'num-server-rounds' (Flower's name for it); write num-server-rounds=3."),
    ("stratgy='fedavg' seed=1", "Unknown run-config key 'stratgy'. Did you mean 'strategy'?"),
    ("learning-rate=0.1", "Unknown run-config key 'learning-rate'. Did you mean 'lr'? (Flower's app templates"),
    ("tau=2.0", "'tau' is 2.0; it must be <= 1.0"),
    ("seed=1 data-dir='unclosed", "invalid format"),
])
def test_check_config_names_the_key_flower_refuses(text, message, capsys):
    """What `flwr run --run-config TEXT` would refuse with only 'Invalid run configuration': the checker,
    reading TEXT with Flower's own parser, names the key and the closest valid one."""
    assert check_config.main([text]) == 2
    assert message in capsys.readouterr().err


def test_check_config_accepts_a_valid_value_and_a_ready_made_file(capsys):
    assert check_config.main(["num-server-rounds=3 strategy='fedavg' gma=true"]) == 0
    assert "ok: 3 key(s)" in capsys.readouterr().out
    assert check_config.main([str(REPO / "configs" / "irm.toml")]) == 0


def test_records_under_an_old_key_name_read_under_the_new_one():
    """Runs and checkpoints recorded 'num-rounds' (the committed results do): they still group and resume."""
    old = Settings().to_run_config()
    old["num-rounds"] = old.pop("num-server-rounds")
    checkpoint = Checkpoint(round=3, arrays={}, strategy_state={}, rows=[], config=old, report={}, random_states={})
    check_resumable(checkpoint, Settings())
    with pytest.raises(ConfigError, match="'num-server-rounds' is 2, but the checkpoint already holds 3 rounds"):
        check_resumable(checkpoint, Settings(num_server_rounds=2))
    assert current_keys(old) == Settings().to_run_config()
