"""LocalFlower's staged app copy (the same FAB) and its guard against a second local SuperLink in its
FLWR_HOME (it would take runs)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

from fedgma.tools.local_flower import FLWR, LocalFlower, foreign_superlinks, staged_app
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


def fab_of(app, folder):
    """The files of the FAB ``flwr build`` makes of ``app`` (name -> bytes)."""
    folder.mkdir()
    subprocess.run([FLWR, "build", "--app", str(app)], cwd=folder, capture_output=True, timeout=300, check=True)
    (fab,) = folder.glob("*.fab")
    with zipfile.ZipFile(fab) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_staged_app_builds_the_same_fab_without_its_ignored_folders(tmp_path):
    staged = staged_app(REPO, tmp_path / "app")
    assert not (staged / ".git").exists() and not (staged / ".venv").exists()  # .venv: in the .gitignore
    original = fab_of(REPO, tmp_path / "from-repo")
    assert "fedgma/server_app.py" in original and fab_of(staged, tmp_path / "from-copy") == original


def test_a_negated_pattern_is_matched_file_by_file(tmp_path):
    app = tmp_path / "src"
    (app / "logs").mkdir(parents=True)
    (app / "logs" / "a.log").write_text("x")
    (app / "logs" / "keep.log").write_text("x")
    (app / "link.py").symlink_to(app / "logs" / "a.log")
    (app / ".gitignore").write_text("# logs stay local\nlogs/*\n!logs/keep.log\n")
    staged = staged_app(app, tmp_path / "app")
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*")) == [".gitignore", "logs",
                                                                                  "logs/keep.log"]


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
