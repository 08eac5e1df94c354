"""End to end on real Flower processes: a SuperLink with TLS and SuperNode
authentication and real SuperNodes on 127.0.0.1 (free ports), running FedGMA.

The transport is the one the installed Flower's SuperNode speaks: HTTP(S) under
1.40+, gRPC (grpc-rere, the Fleet API on a port of its own) under 1.39; CI runs
this file under both (``.ci/run``). Run alone with ``pytest -m deployment``.
Every process is stopped by PID in the fixtures' teardown, also when a test fails.
"""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager

import pytest
from conftest import REPO

from fedgma.tools.local_flower import run_config_arg
from fedgma.tools.deploy import local
from fedgma.tools.deploy.local import BIN, CONNECTION, Deployment, check_transport, default_transport

pytestmark = pytest.mark.deployment


def tiny_run(mnist_dir, out, **extra):
    return {"data-dir": str(mnist_dir), "num-server-rounds": 2, "max-client-examples": 200, "max-test-examples": 300,
            "output-dir": str(out), "strategy": "fedgma", **extra}


@contextmanager
def deployed_nodes(folder, mnist_dir, count):
    """A SuperLink and ``count`` registered SuperNodes (partitions 0..count-1), all stopped by PID afterwards."""
    deployed = Deployment(folder)
    try:
        deployed.start_superlink()
        for i in range(count):
            deployed.register(f"node-{i}")
            deployed.start_supernode(f"node-{i}", i, count, str(mnist_dir))
        deployed.wait_for_nodes(count)
        yield deployed
    finally:
        deployed.stop()


@pytest.fixture
def deployment(tmp_path, mnist_dir):
    with deployed_nodes(tmp_path / "deploy", mnist_dir, 2) as deployed:
        yield deployed


def test_the_superlink_serves_supernodes_over_the_installed_flowers_transport(deployment):
    superlink_log = (deployment.logs / "superlink.log").read_text()
    assert deployment.transport == default_transport()
    if deployment.transport == "grpc":
        assert f"Starting Fleet API (gRPC-rere) on {deployment.fleet_address}" in superlink_log, superlink_log
        assert deployment.fleet_port != deployment.port
    else:
        assert "gRPC-rere" not in superlink_log and deployment.fleet_port == deployment.port
    assert "Uvicorn running on https://" in superlink_log  # TLS on the CLI's HTTP port in both cases


@pytest.mark.parametrize("installed, asked, message", [
    ("1.41.0", "grpc", r"--transport grpc is not possible: Flower 1.41.0 .* pip install 'flwr\[simulation\]==1.39.0'"),
    ("1.39.0", "http", r"--transport http is not possible: Flower 1.39.0 .* speaks gRPC only"),
])
def test_an_impossible_transport_says_which_flower_to_install(monkeypatch, tmp_path, installed, asked, message):
    from packaging.version import Version

    monkeypatch.setattr(local, "flower_version", lambda: Version(installed))
    with pytest.raises(ValueError, match=message):
        Deployment(tmp_path / "deploy", transport=asked)
    assert check_transport("grpc" if asked == "http" else "http")


def test_tls_authenticated_deployment_runs_fedgma_and_refuses_unregistered_nodes(deployment, mnist_dir, tmp_path):
    deployment.node_key("intruder")  # a key pair that is never registered
    deployment.start_supernode("intruder", 0, 2, str(mnist_dir))
    out = tmp_path / "out"
    done = deployment.run_app(REPO, tiny_run(mnist_dir, out))
    assert deployment.runs()[0]["status"] == "finished:completed", done.stdout[-4000:] + done.stderr[-4000:]

    report = json.loads((out / "metrics.json").read_text())
    assert report["status"] == "completed" and [r["round"] for r in report["rounds"]] == [0, 1, 2]
    for row in report["rounds"][1:]:  # only the two registered nodes trained
        assert (row["replies-accepted"], row["replies-failed"], row["replies-rejected"]) == (2, 0, 0)
    assert len(deployment.online_nodes()) == 2
    intruder_log = (deployment.logs / "intruder.log").read_text()
    assert "Failed to activate SuperNode" in intruder_log, intruder_log[-2000:]  # refused by the SuperLink
    assert not deployment.alive("intruder") and "Receiving: train message" not in intruder_log


def run_and_kill(deployment, app_dir, config, node, when):
    """``flwr run`` against the deployment; kill ``node`` as soon as its log holds ``when`` (a text and how many
    times it must appear); the run's output once it ends."""
    run = subprocess.Popen([str(BIN / "flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config",
                            run_config_arg(config)], cwd=deployment.workdir, env=deployment.env(deployment.cli_home),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text, times = when
    try:
        deadline = time.time() + 180
        while (deployment.logs / f"{node}.log").read_text().count(text) < times:
            assert time.time() < deadline, f"{node}'s log never showed {text!r} {times} times"
            time.sleep(0.1)
        deployment.kill(node)
        output, _ = run.communicate(timeout=600)
    finally:
        run.kill()
    return output


def test_supernode_killed_mid_round_counts_as_failure_and_the_run_finishes(deployment, mnist_dir, tmp_path):
    out = tmp_path / "out"
    config = tiny_run(mnist_dir, out, **{"max-client-examples": 3000, "batch-size": 32, "min-available-nodes": 1})
    # in the middle of its local training
    output = run_and_kill(deployment, REPO, config, "node-1", ("Start `flwr-clientapp` process", 1))
    assert deployment.runs()[0]["status"] == "finished:completed", output[-4000:]
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert (rounds[1]["replies-accepted"], rounds[1]["replies-failed"]) == (1, 1)
    assert rounds[2]["replies-accepted"] == 1 and rounds[2]["round"] == 2


def test_secagg_gma_survives_a_supernode_killed_during_its_secure_round(mnist_dir, tmp_path):
    """GMA over FedAvg under SecAgg+ on the legacy app over real SuperNodes: the third of a SecAgg+ round's four
    train messages asks a client for its masked reply (it trains then); one of three SuperNodes is killed as it
    receives it. SecAgg+ promises the sum of the survivors: the server rebuilds the dead node's pairwise masks
    from the other two nodes' shares (threshold 2 of 3 shares). Each stage waits at most the round timeout; with
    45 s the round halted once on a loaded 2-core machine (not investigated), so the test gives it 120 s."""
    out = tmp_path / "out"
    config = tiny_run(mnist_dir, out, **{"num-server-rounds": 1, "max-client-examples": 3000, "batch-size": 32,
                                         "secagg": True, "round-timeout": 120.0, "strategy": "fedavg", "gma": True})
    with deployed_nodes(tmp_path / "deploy", mnist_dir, 3) as deployment:
        output = run_and_kill(deployment, REPO / "examples" / "legacy", config, "node-2",
                              ("Receiving: train message", 3))
        assert deployment.runs()[0]["status"] == "finished:completed", output[-4000:]
    row = json.loads((out / "metrics.json").read_text())["rounds"][1]
    assert (row.get("replies-accepted"), row.get("replies-failed"), row.get("outcome")) == (2, 1, "aggregated"), row
    assert 0 < row["mask-density"] < 1
