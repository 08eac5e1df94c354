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

from fedgma.tools.deploy.__main__ import main as deploy_main
from fedgma.tools.local_flower import run_config_arg
from fedgma.tools.deploy import local
from fedgma.tools.deploy.local import (BIN, CONNECTION, Deployment, DeploymentError, check_transport,
                                       default_transport)
from fedgma.tools.processes import free_port, pids_mentioning

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


def test_up_down_up_in_one_folder_reuses_its_keys_and_fresh_starts_clean(tmp_path, mnist_dir, capsys):
    """The second `up` in a folder finds its node keys still registered in the SuperLink's saved database (it
    failed with "Public key already in use"): it reuses them, and the earlier deployment's nodes; `up --fresh`
    deletes the folder's keys, certificates and database first, so new keys are registered."""
    folder = tmp_path / "deploy"
    up = ["up", "--workdir", str(folder), "--nodes", "2", "--data-dir", str(mnist_dir)]
    try:
        deploy_main(up)
        first_key = (folder / "keys" / "node-0.pub").read_bytes()
        nodes = {node["node-id"] for node in Deployment(folder).online_nodes()}
        deploy_main(["down", "--workdir", str(folder)])
        capsys.readouterr()
        deploy_main(up)
        printed = capsys.readouterr().out
        assert printed.count("already registered with this folder's SuperLink (reused)") == 2, printed
        assert (folder / "keys" / "node-0.pub").read_bytes() == first_key
        assert {node["node-id"] for node in Deployment(folder).online_nodes()} == nodes
        deploy_main(["down", "--workdir", str(folder)])
        deploy_main([*up, "--fresh"])
        assert "already registered" not in capsys.readouterr().out
        assert (folder / "keys" / "node-0.pub").read_bytes() != first_key
        assert len(Deployment(folder).online_nodes()) == 2
    finally:
        Deployment(folder).stop()


def test_a_failed_up_stops_what_it_started_and_removes_what_it_created(tmp_path, mnist_dir, monkeypatch):
    """An `up` that fails once its processes run (here: the SuperNodes never come online) stops them, says so
    without a traceback and leaves only the logs it names."""
    folder = tmp_path / "deploy"

    def never_online(deployment, count, timeout=90):
        raise DeploymentError("fewer than 2 SuperNodes online")

    monkeypatch.setattr(Deployment, "wait_for_nodes", never_online)
    with pytest.raises(SystemExit, match="deploy up failed, stopped what it started and removed what it created"):
        deploy_main(["up", "--workdir", str(folder), "--data-dir", str(mnist_dir)])
    assert [path.name for path in folder.iterdir()] == ["logs"]
    assert sorted(path.name for path in (folder / "logs").iterdir()) == ["node-0.log", "node-1.log", "superlink.log"]
    assert not pids_mentioning(str(folder))


def test_a_supernode_given_a_wrong_port_gives_up_and_names_the_address(tmp_path, mnist_dir):
    """A SuperNode whose --superlink nothing answers at (and, over gRPC, one given the CLI's HTTPS port: two ports,
    an easy mistake) used to retry for ever; now it gives up after the deployment's --max-wait-time and
    wait_for_nodes says which address it tried and what is likely wrong there."""
    with deployed_nodes(tmp_path / "deploy", mnist_dir, 0) as deployment:
        deployment.node_wait = 5
        wrong = {"closed": free_port()} | ({"cli-port": deployment.port} if deployment.transport == "grpc" else {})
        right = deployment.fleet_port
        started = time.time()
        for name, port in wrong.items():
            deployment.register(name)
            deployment.fleet_port = port
            deployment.start_supernode(name, 0, 2, str(mnist_dir))
        deployment.fleet_port = right
        with pytest.raises(DeploymentError) as raised:
            deployment.wait_for_nodes(1)
        assert time.time() - started < 60, "the SuperNode did not give up within its bound"
        assert "gave up reaching the SuperLink at 127.0.0.1:" in str(raised.value)
        deadline = time.time() + 60
        while any(deployment.alive(name) for name in wrong) and time.time() < deadline:
            time.sleep(0.5)
        closed = deployment.exit_reason("closed")
        assert f"at 127.0.0.1:{wrong['closed']} (its --superlink" in closed, closed
        assert f"nothing accepts connections at 127.0.0.1:{wrong['closed']}" in closed, closed
        if "cli-port" in wrong:
            cli = deployment.exit_reason("cli-port")
            assert f"{deployment.address} is the SuperLink's HTTP(S) port, for the CLI" in cli, cli
            assert f"its Fleet API port, {deployment.fleet_address}" in cli, cli


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
    assert f"reached the SuperLink at {deployment.fleet_address}, which refused to activate it: its key is not " \
           "registered there" in deployment.exit_reason("intruder")


def run_until(deployment, app_dir, config, ready, then):
    """``flwr run`` against the deployment; call ``then()`` as soon as ``ready()`` holds; the run's output once it
    ends."""
    run = subprocess.Popen([str(BIN / "flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config",
                            run_config_arg(config)], cwd=deployment.workdir, env=deployment.env(deployment.cli_home),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while not ready():
            assert time.time() < deadline, "the run never got where the test acts"
            time.sleep(0.1)
        then()
        output, _ = run.communicate(timeout=600)
    finally:
        run.kill()
    return output


def run_and_kill(deployment, app_dir, config, node, when):
    """:func:`run_until` ``node``'s log holds ``when`` (a text and how many times it must appear), then kill it."""
    text, times = when
    return run_until(deployment, app_dir, config,
                     lambda: (deployment.logs / f"{node}.log").read_text().count(text) >= times,
                     lambda: deployment.kill(node))


def recorded_rounds(out):
    """The rounds metrics.json in ``out`` holds so far ([] before it exists)."""
    try:
        return [row["round"] for row in json.loads((out / "metrics.json").read_text())["rounds"]]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def test_deploy_down_mid_run_records_a_stop_and_keeps_the_finished_rounds(deployment, mnist_dir, tmp_path):
    """`deploy down` once round 1 is recorded, so during round 2: SIGTERM reaches the ServerApp, whose
    metrics.json says it was stopped on purpose (not "failed: SystemExit: 0") and keeps rounds 0 and 1."""
    out = tmp_path / "out"
    run_until(deployment, REPO, tiny_run(mnist_dir, out, **{"num-server-rounds": 3}), lambda: 1 in recorded_rounds(out),
              lambda: deploy_main(["down", "--workdir", str(deployment.workdir)]))
    report = json.loads((out / "metrics.json").read_text())
    assert report["status"] == "stopped: by the operator during round 2", report["status"]
    assert [row["round"] for row in report["rounds"]] == [0, 1]
    assert not any(deployment.alive(name) for name in deployment.pids)


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
