"""Deployment that stays ours: keys private from their first byte, the CA key apart from the SuperLink's files,
`deploy down` stopping only processes it can prove it started, and `deploy up` as the docs show it."""

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO

from fedgma.settings import Settings
from fedgma.tools.deploy.__main__ import EXAMPLE_ROUNDS, run_command, main as deploy_main
from fedgma.tools.deploy.keys import make_certificates, make_node_key
from fedgma.tools.deploy.local import Deployment, default_transport
from fedgma.tools.processes import identity, is_alive, same_process, stop


def test_private_keys_are_created_0600_and_never_through_a_planted_file(tmp_path, monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, mode=0o777, **kw: opened.append((str(path), flags, mode))
                        or real_open(path, flags, mode, **kw))
    paths = make_certificates(tmp_path / "certs", tmp_path / "ca")
    private, _ = make_node_key(tmp_path / "keys", "node-0")
    for key in (paths["server_key"], paths["ca_key"], private):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        flags, mode = next((f, m) for p, f, m in opened if p == str(key))
        assert flags & os.O_EXCL and flags & os.O_CREAT and mode == 0o600  # never world-readable, even briefly
    assert paths["ca_key"].parent == tmp_path / "ca" and not (tmp_path / "certs" / "ca.key").exists()
    target = tmp_path / "victim"
    target.write_text("keep")
    os.symlink(target, tmp_path / "keys" / "node-1")
    with pytest.raises(FileExistsError, match="never replaces"):
        make_node_key(tmp_path / "keys", "node-1")
    assert target.read_text() == "keep"


def test_down_leaves_a_process_it_cannot_prove_it_started(tmp_path, capsys):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        recorded = identity(bystander.pid)
        (tmp_path / "pids.json").write_text(json.dumps({
            "superlink": bystander.pid,  # an older release's entry: a bare PID
            "node-0": recorded | {"started": recorded["started"] - 100},  # the PID reused by another process
            "node-1": recorded | {"command": ["flower-supernode"]}}))
        deploy_main(["down", "--workdir", str(tmp_path)])
        assert is_alive(bystander.pid)
        printed = capsys.readouterr().out
        assert printed.count("not touched") == 3 and "Stopped nothing" in printed
        (tmp_path / "pids.json").write_text(json.dumps({"node-0": recorded}))  # provably ours: stopped
        assert Deployment(tmp_path).pids == {"node-0": bystander.pid}
        deploy_main(["down", "--workdir", str(tmp_path)])
        bystander.wait(timeout=10)
    finally:
        stop({bystander.pid}, grace=0.5)


def test_a_process_still_inside_exec_is_recorded_with_its_command_line(monkeypatch):
    """Right after ``Popen`` a busy machine often shows an empty command line (the child is still inside
    ``execve``); recorded like that, ``down`` would never stop the process. The record waits for the real one."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    bystander = subprocess.Popen(sleeper)
    try:
        real, reads = psutil.Process.cmdline, []
        monkeypatch.setattr(psutil.Process, "cmdline",
                            lambda process: [] if len(reads) < 3 and not reads.append(1) else real(process))
        recorded = identity(bystander.pid)
        assert len(reads) == 3 and recorded["command"] == sleeper and same_process(recorded)
    finally:
        stop({bystander.pid}, grace=0.5)


def test_a_wall_clock_step_does_not_hide_a_recorded_process(monkeypatch):
    """The start time psutil reports follows the wall clock (boot time + ticks since boot): after an NTP step of
    a second the process is still the one recorded; a start 100 s away or another command line is not."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        recorded = identity(bystander.pid)
        real = psutil.boot_time()  # psutil's Linux backend adds its own boot_time() to the ticks since boot
        monkeypatch.setattr("psutil._pslinux.boot_time", lambda: real + 1.0)  # /proc/stat btime moved by 1 s
        assert identity(bystander.pid)["started"] == pytest.approx(recorded["started"] + 1.0, abs=0.05)
        assert same_process(recorded)
        assert not same_process(recorded | {"started": recorded["started"] - 100})
        assert not same_process(recorded | {"command": ["flower-supernode"]})
    finally:
        stop({bystander.pid}, grace=0.5)


def test_the_run_command_up_prints_is_the_one_the_docs_show_with_valid_keys():
    """`up` prints the `flwr run` line of docs/deployment.md, round count included (without one, copying it ran
    the 15-round default, about 15 minutes), and every run-config key in it is one the app accepts."""
    command = run_command(Path("deploy/run"), "/abs/path/to/mnist", 2)
    docs = re.sub(r"\s*\\\n\s*", " ", (REPO / "docs" / "deployment.md").read_text())
    assert docs.count(command) == 2, command  # one machine over HTTP(S), and over gRPC
    pairs = dict(pair.split("=", 1) for pair in shlex.split(command.split("--run-config ", 1)[1])[0].split())
    settings = Settings.from_run_config({key: int(value) if value.isdigit() else value.strip("'")
                                         for key, value in pairs.items()})
    assert settings.num_server_rounds == EXAMPLE_ROUNDS and settings.min_available_nodes == 2


def test_a_refused_up_leaves_no_folder_behind(tmp_path):
    """`up` with a transport the installed Flower cannot speak stops before writing anything; in a folder whose
    earlier deployment used that transport (another Flower release), it says so and how to start clean."""
    folder = tmp_path / "deploy"
    impossible = "grpc" if default_transport() == "http" else "http"
    with pytest.raises(SystemExit, match=f"--transport {impossible} is not possible"):
        deploy_main(["up", "--workdir", str(folder), "--transport", impossible])
    assert not folder.exists()
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"port": 9093, "transport": impossible}))
    with pytest.raises(SystemExit, match=f"holds a deployment over {impossible} .* `deploy up --fresh` starts clean"):
        deploy_main(["up", "--workdir", str(folder)])
    assert [path.name for path in folder.iterdir()] == ["meta.json"]


def test_stop_counts_a_zombie_as_exited():
    """A stopped process whose parent still runs and has not reaped it (a SuperLink's SuperExec, stopped before
    the SuperLink) is a zombie: it has exited, and `stop` does not wait out its grace period for it."""
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, time\n"
                               "child = subprocess.Popen(['sleep', '60']); print(child.pid, flush=True)\n"
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        started = time.monotonic()
        stop({child}, grace=5.0)
        assert time.monotonic() - started < 2.5 and psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    finally:
        stop({parent.pid}, grace=0.5)
