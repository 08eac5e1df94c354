"""The simulation on an existing Ray cluster (``RAY_ADDRESS``), as the README's multi-machine steps do it.

The test starts a Ray cluster of its own (``ray start --head`` and
``ray start --address=...`` for a worker node; free ports, its own temp dir),
runs a 2-round simulation with ``RAY_ADDRESS`` pointing at it, checks where the
ClientApp actors ran, and stops the cluster's processes by PID.

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
import threading
from pathlib import Path

import psutil
import pytest
from conftest import REPO

from fedgma.tools.local_flower import LocalFlower
from fedgma.tools.processes import free_port, stop_tree_and_mentions

pytestmark = pytest.mark.simulation

RAY = str(Path(sys.executable).with_name("ray"))


def _ports(head: bool) -> list[str]:
    """Free ports for every listener of one Ray node (two nodes on one machine must not share any)."""
    ports = {"--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port()}
    if head:
        ports["--dashboard-port"] = free_port()
    return [f"{key}={value}" for key, value in ports.items()]


def _ray(*arguments: str) -> None:
    started = subprocess.run([RAY, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *arguments],
                             capture_output=True, text=True, timeout=180,
                             env=os.environ | {"RAY_USAGE_STATS_ENABLED": "0"})
    assert started.returncode == 0, started.stdout + started.stderr


@pytest.fixture
def ray_cluster():
    """A two-node Ray cluster on free ports: a head and a worker of one CPU each, ``ray start`` as
    docs/deployment.md's recipe has it; yields (address, temp dir); every process stopped by PID afterwards
    (all name the head's temp dir, a short one in /tmp: Ray's socket paths under it must stay under 108
    bytes)."""
    temp = Path(tempfile.mkdtemp(prefix="ray-head-"))
    port, client_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    try:
        _ray("--head", f"--port={port}", f"--ray-client-server-port={client_port}", f"--temp-dir={temp}",
             "--num-cpus=1", "--include-dashboard=false", *_ports(head=True))
        _ray(f"--address={address}", "--num-cpus=1", *_ports(head=False))
        yield address, temp
    finally:
        stop_tree_and_mentions(str(temp))
        stop_tree_and_mentions(f"--port={client_port} ")  # Ray's client server names neither folder nor head
        shutil.rmtree(temp, ignore_errors=True)


def client_actors_by_raylet(stop: threading.Event, raylets: set[int], seen: dict[int, int],
                            every: float = 0.2) -> None:
    """Until ``stop``: for every live ClientApp actor process started by one of ``raylets`` (one per Ray node of
    this cluster; other tests' clusters may run beside it), the raylet that started it."""
    while not stop.wait(every):
        for process in psutil.process_iter(["cmdline"]):
            try:
                if "ClientAppActor" not in " ".join(process.info["cmdline"] or ()):
                    continue
                raylet = next(p for p in process.parents() if p.name() == "raylet")
                if raylet.pid in raylets:
                    seen[process.pid] = raylet.pid
            except (psutil.Error, StopIteration):
                continue


def test_simulation_places_clients_on_both_nodes_of_a_two_node_cluster(ray_cluster, mnist_dir, tmp_path):
    """A head and a worker of one CPU each (``ray start``, as docs/deployment.md's recipe), attached to with
    ``RAY_ADDRESS``: the run starts no Ray instance of its own, and with one CPU per client Flower's Ray backend
    starts two ClientApp actors, which Ray can only place one on each node."""
    address, temp = ray_cluster
    raylets = {p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and str(temp) in
               " ".join(p.info["cmdline"]) and p.name() == "raylet"}
    assert len(raylets) == 2, "the cluster should have two nodes"
    out, stop, seen = tmp_path / "out", threading.Event(), {}
    watcher = threading.Thread(target=client_actors_by_raylet, args=(stop, raylets, seen), daemon=True)
    watcher.start()
    try:
        with LocalFlower(env={"RAY_ADDRESS": address}) as flower:
            done = flower.run(REPO, {"data-dir": str(mnist_dir), "num-server-rounds": 2, "max-client-examples": 100,
                                     "max-test-examples": 200, "output-dir": str(out)}, 4)
            assert flower.runs()[0]["status"] == "finished:completed", done.output[-4000:]
            fresh_sessions = list((flower.root / "ray").rglob("session_*"))
    finally:
        stop.set()
        watcher.join()
    assert json.loads((out / "metrics.json").read_text())["rounds"][-1]["replies-accepted"] == 4
    assert fresh_sessions == [], "the simulation started a Ray instance of its own"
    assert set(seen.values()) == raylets, f"client actors by raylet: {seen}; raylets: {raylets}"
