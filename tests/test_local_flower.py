"""LocalFlower's guard against a second local SuperLink in its FLWR_HOME (it would take runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedgma.tools.local_flower import FLWR, LocalFlower, foreign_superlinks
from fedgma.tools.local_flower import main as local_main
from fedgma.tools.processes import command_lines, descendants, free_port, identity, is_alive, stop

SUPERLINK = ["/venv/bin/python3", "/venv/bin/flower-superlink", "--insecure", "--simulation"]


def test_foreign_superlinks_are_the_superlinks_on_another_port():
    commands = {
        1: [*SUPERLINK, "--port", "4000", "--log-file", "/tmp/x/home/local-superlink/superlink.log"],
        2: [*SUPERLINK, "--port", "5000", "--log-file", "/tmp/x/home/local-superlink/superlink.log"],
        3: [*SUPERLINK, "--log-file", "/tmp/x/home/local-superlink/superlink.log"],  # Flower's default port
        4: ["/venv/bin/python3", "/venv/bin/flower-superexec", "--runtime-api-address", "127.0.0.1:5000"],
        5: ["flower-superlink", "--port", "6000"],
        6: ["/usr/bin/tail", "-f", "/tmp/x/home/local-superlink/superlink.log", "--port", "5000"],
    }
    assert foreign_superlinks(commands, "4000") == {2, 3, 5}
    assert foreign_superlinks({}, "4000") == set()


@pytest.mark.deployment
def test_a_second_superlink_in_the_same_flwr_home_is_stopped_before_a_run(tmp_path):
    with LocalFlower(tmp_path / "flwr") as flower:
        assert flower.runs() == []  # starts this setup's own local SuperLink
        ours = set(command_lines(flower.mention))
        # What a `flwr list` by hand with this FLWR_HOME but not its port variables does: a second SuperLink
        # sharing the state database, with runtime dependency installation on (the variable unset).
        rogue_env = flower.env | {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
                                  "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
        del rogue_env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"]
        subprocess.run([FLWR, "list"], cwd=flower.root, env=rogue_env, capture_output=True, timeout=120, check=True)
        rogue_superlinks = foreign_superlinks(command_lines(flower.mention), flower.env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"])
        assert len(rogue_superlinks) == 1
        rogue_tree = rogue_superlinks | descendants(next(iter(rogue_superlinks)))  # with its SuperExec
        assert len(rogue_tree) >= 2

        assert flower.stop_foreign_superlinks() == rogue_superlinks
        assert not any(is_alive(pid) for pid in rogue_tree)
        assert all(is_alive(pid) for pid in ours)
        assert flower.stop_foreign_superlinks() == set()


def test_stop_superlink_stops_only_the_local_superlink_of_its_flwr_home(tmp_path):
    script = tmp_path / "flower-superlink"  # a stand-in with the real one's name and command line
    script.write_text("import time\ntime.sleep(60)\n")
    mine, other = tmp_path / "mine", tmp_path / "other"
    processes = [subprocess.Popen([sys.executable, str(script), "--database", str(home / "local-superlink" / "state.db")])
                 for home in (mine, other)]
    try:
        for process in processes:  # a process still inside execve shows no command line yet (see identity)
            assert identity(process.pid)["command"][1] == str(script)
        assert local_main(["stop-superlink", "--flwr-home", str(mine)]) == 0
        processes[0].wait(timeout=10)
        assert is_alive(processes[1].pid)  # another FLWR_HOME's SuperLink: untouched
    finally:
        stop({p.pid for p in processes}, grace=0.5)
