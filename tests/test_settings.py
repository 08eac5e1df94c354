"""Run-config validation and the documentation that must match it."""

import pytest
import tomllib
from conftest import REPO

from fedgma.checkpoint import Checkpoint, check_resumable
from fedgma.settings import ConfigError, Settings


@pytest.mark.parametrize("override, message", [
    ({"strategy": "fedfoo"}, "'strategy' is 'fedfoo'; allowed values: 'fedgma'"),
    ({"p": 1.5}, "'p' is 1.5; it must be <= 1.0"),
    ({"tau": -0.1}, "'tau' is -0.1; it must be >= 0.0"),
    ({"lr": -0.01}, "'lr' is -0.01; it must be > 0.0"),
    ({"local-epochs": -1}, "'local-epochs' is -1; it must be >= 1"),
    ({"partitioner": "shards"}, "'partitioner' is 'shards'; allowed values: 'pathological', 'iid', 'dirichlet'"),
    ({"stratgy": "fedavg"}, "Unknown run-config key 'stratgy'. Did you mean 'strategy'?"),
    ({"num-rounds": 2.5}, "'num-rounds' must be a int"),
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


def test_readme_documents_every_key_with_its_default():
    readme = (REPO / "README.md").read_text()
    for key, default, _ in Settings.describe():
        shown = f'"{default}"' if isinstance(default, str) else str(default).lower() if isinstance(default, bool) else str(default)
        assert f"| `{key}` | `{shown}` |" in readme, f"README lacks the row for '{key}' with default {shown}"


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
