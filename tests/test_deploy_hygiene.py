"""Deployment that stays ours: keys private from their first byte, the CA key apart from the SuperLink's files,
and `deploy down` stopping only processes it can prove it started."""

import json
import os
import stat
import subprocess
import sys

import psutil
import pytest

from fedgma.tools.deploy.__main__ import main as deploy_main
from fedgma.tools.deploy.keys import make_certificates, make_node_key
from fedgma.tools.deploy.local import Deployment
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
