"""The simulation on an existing Ray cluster (``RAY_ADDRESS``), as the README's multi-machine steps do it.

The test starts a Ray head of its own (``ray start --head``, free ports, its own
temp dir), runs a 2-round simulation with ``RAY_ADDRESS`` pointing at it, checks
that the ClientApp actors ran in that cluster's session (and that no fresh local
Ray instance was started), and stops the head's processes by PID.

Ray replaces a loopback ``--node-ip-address`` with the machine's own address
(``ray._private.services.resolve_ip_for_localhost``), so its internal traffic
uses this machine's interface address; it never leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO

from fedgma.tools.local_flower import LocalFlower
from fedgma.tools.processes import free_port, stop_tree_and_mentions

pytestmark = pytest.mark.simulation

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def ray_head():
    """A one-node Ray cluster on free ports; yields (address, temp dir); stopped by PID afterwards. The temp dir
    is a short one in /tmp, not pytest's: Ray's socket paths under it must stay under 108 bytes."""
    temp = Path(tempfile.mkdtemp(prefix="ray-head-"))
    port, client_port = free_port(), free_port()
    ports = {"--port": port, "--ray-client-server-port": client_port, "--dashboard-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port()}
    command = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--num-cpus=2",
               "--include-dashboard=false", "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())]
    try:
        started = subprocess.run(command, capture_output=True, text=True, timeout=180, env=os.environ | {"RAY_USAGE_STATS_ENABLED": "0"})
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}", temp
    finally:
        stop_tree_and_mentions(str(temp))
        stop_tree_and_mentions(f"--port={client_port} ")  # Ray's client server names neither folder nor head
        shutil.rmtree(temp, ignore_errors=True)


def test_simulation_runs_on_an_existing_ray_cluster(ray_head, mnist_dir, tmp_path):
    address, temp = ray_head
    out = tmp_path / "out"
    with LocalFlower(env={"RAY_ADDRESS": address}) as flower:
        done = flower.run(REPO, {"data-dir": str(mnist_dir), "num-server-rounds": 2, "max-client-examples": 100,
                                 "max-test-examples": 200, "output-dir": str(out)}, 2)
        assert flower.runs()[0]["status"] == "finished:completed", done.output[-4000:]
        fresh_sessions = list((flower.root / "ray").rglob("session_*"))
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"
    assert fresh_sessions == [], "the simulation started a Ray instance of its own"
    logs = (temp / "session_latest" / "logs")
    actor_logs = [f for f in logs.glob("worker-*") if "ClientAppActor" in f.read_text(errors="replace")]
    assert len(actor_logs) >= 1, sorted(p.name for p in logs.iterdir())
