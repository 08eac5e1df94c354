"""A real Flower deployment on this machine: one SuperLink and N SuperNodes on 127.0.0.1.

TLS and SuperNode authentication by default, over either transport between
SuperNodes and the SuperLink's Fleet API (:func:`default_transport`):

- ``http``: Flower 1.40 and later. Fleet API, CLI (Control API) and runtime API
  share the SuperLink's one HTTP(S) port.
- ``grpc``: Flower 1.39 and earlier (``grpc-rere``). The Fleet API listens on a
  port of its own (``--fleet-api-address``) and the SuperNodes dial it; the CLI
  still talks HTTP(S) to the SuperLink's main port.

:class:`Deployment` writes everything under one work folder:

    ca/           ca.key: signs server certificates; keep it off the SuperLink's host (mode 0700, key 0600)
    certs/        ca.crt (give to SuperNodes and the CLI), server.pem, server.key (SuperLink only)
    keys/         node-<i> (private, stays on that node) and node-<i>.pub (registered with the SuperLink)
    logs/         superlink.log, node-<i>.log
    flwr-home/    FLWR_HOME of the CLI, with the connection "fedgma-deploy" in config.toml
    state/        each process's own FLWR_HOME (installed app bundles) and the SuperLink's database
    pids.json     the processes this folder started (PID, start time, command line), for ``down``
    meta.json     the ports, transport and mode, so that a later ``up`` in this folder reuses them

A second ``up`` in the same folder reuses all of it: the same certificates and
keys, and the SuperLink's database, which still holds the registered node keys
and the earlier runs. :meth:`Deployment.remove` with :data:`LAYOUT` clears it
for a fresh start (``up --fresh``).

Processes are started in their own sessions and keep running after ``up``
returns; ``down`` (or :meth:`Deployment.stop`) stops them, and their children,
by PID. ``python -m fedgma.tools.deploy --help`` is the command-line front end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from packaging.version import Version

from ..local_flower import run_config_arg
from ..processes import descendants, free_port, identity, is_alive, same_process, stop
from .diagnose import listens, supernode_exit
from .keys import make_certificates, make_node_key

BIN = Path(sys.executable).parent
CONNECTION = "fedgma-deploy"
TRANSPORTS = ("grpc", "http")
FIRST_HTTP_ONLY = Version("1.40")  # Flower 1.40 release notes: SuperNodes no longer accept --grpc-rere
#: What ``up`` writes into a work folder (the module docstring says what each holds).
LAYOUT = ("ca", "certs", "keys", "logs", "flwr-home", "state", "pids.json", "meta.json")
#: Seconds a SuperNode tries to reach its SuperLink before giving up (its ``--max-wait-time``, per request):
#: long enough for a SuperLink restart, short enough that a wrong address shows within a minute.
NODE_WAIT_S = 60.0
#: What ``flwr supernode register`` says of a key the SuperLink's database already holds (Flower 1.39 to 1.42).
ALREADY_REGISTERED = "Public key already in use"


class DeploymentError(RuntimeError):
    """A part of the deployment did not start or work; the message says which and what is likely wrong."""


def flower_version() -> Version:
    return Version(installed_version("flwr"))


def default_transport() -> str:
    """``grpc`` under Flower 1.39 and earlier, ``http`` under 1.40 and later: the only one each SuperNode speaks."""
    return "grpc" if flower_version() < FIRST_HTTP_ONLY else "http"


def check_transport(transport: str) -> str:
    """``transport`` if the installed Flower's SuperNode speaks it; otherwise an error that says what to install."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
    if transport != default_transport():
        installed = f"Flower {flower_version()} is installed"
        raise ValueError(
            f"--transport grpc is not possible: {installed}, whose SuperNode reaches the SuperLink over HTTP(S) "
            "only (SuperNodes dropped --grpc-rere in 1.40). Install the newest release with gRPC SuperNodes, "
            "pip install 'flwr[simulation]==1.39.0', or use --transport http."
            if transport == "grpc" else
            f"--transport http is not possible: {installed}, whose SuperNode speaks gRPC only (grpc-rere; HTTP "
            "SuperNodes came with 1.40). Install a newer release, pip install 'flwr[simulation]>=1.41,<1.43', or use "
            "--transport grpc.")
    return transport


class Deployment:
    """SuperLink + SuperNodes under ``workdir``; see the module docstring for the layout."""

    def __init__(self, workdir: Path, insecure: bool = False, port: int | None = None,
                 hosts: list[str] | None = None, transport: str | None = None,
                 node_wait: float = NODE_WAIT_S) -> None:
        """Reads what the folder holds; writes nothing until a process starts (a refused transport leaves no
        trace)."""
        self.workdir = Path(workdir).resolve()
        self.insecure = insecure
        self.hosts = hosts or []
        self.node_wait = node_wait
        self.certs, self.keys, self.logs = self.workdir / "certs", self.workdir / "keys", self.workdir / "logs"
        self.ca = self.workdir / "ca"  # the CA's private key, apart from what the SuperLink reads
        self.cli_home, self.state = self.workdir / "flwr-home", self.workdir / "state"
        self.pid_file = self.workdir / "pids.json"
        self.identities, self.stale = self._read_pids()
        self.pids: dict[str, int] = {name: int(entry["pid"]) for name, entry in self.identities.items()}
        meta = self._read_meta()
        self.port = port or int(meta.get("port", 0)) or free_port()
        try:
            self.transport = check_transport(transport or meta.get("transport") or default_transport())
        except ValueError as problem:
            if transport or not meta.get("transport"):
                raise
            raise ValueError(f"{self.workdir} holds a deployment over {meta['transport']} (its meta.json), made "
                             f"with another Flower release: `deploy up --fresh` starts clean. {problem}") from None
        self.fleet_port = int(meta.get("fleet-port", 0)) or (free_port() if self.transport == "grpc" else self.port)

    # --- processes --------------------------------------------------------------
    def env(self, home: Path) -> dict[str, str]:
        """Environment of a Flower process with its own FLWR_HOME (no runtime dependency installs)."""
        return os.environ | {"FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                             "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def _spawn(self, name: str, command: list[str]) -> int:
        home = self.state / name
        home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(command, cwd=home, env=self.env(home), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.pids[name] = process.pid
        self.identities[name] = identity(process.pid) or {"pid": process.pid}
        self._save()
        return process.pid

    def _read_pids(self) -> tuple[dict[str, dict], dict[str, str]]:
        """The processes of ``pids.json`` that are provably the ones this folder started (same PID, start
        time and command line), and a note for each that is not: a PID reused by another process, an
        entry of an older release without identity, or one that has exited. Only the first are stopped."""
        recorded = json.loads(self.pid_file.read_text()) if self.pid_file.exists() else {}
        identities, stale = {}, {}
        for name, entry in recorded.items():
            if same_process(entry):
                identities[name] = entry
            else:
                pid = entry.get("pid") if isinstance(entry, dict) else entry
                stale[name] = (f"pid {pid} is not the process this folder started (it exited, or the PID now "
                               "belongs to another process): not touched")
        return identities, stale

    def _save(self) -> None:
        self.identities = {name: self.identities[name] for name in self.pids if name in self.identities}
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(json.dumps(self.identities, indent=2))
        (self.workdir / "meta.json").write_text(json.dumps({"port": self.port, "insecure": self.insecure,
                                                            "transport": self.transport,
                                                            "fleet-port": self.fleet_port}))

    def _read_meta(self) -> dict[str, Any]:
        meta = self.workdir / "meta.json"
        return json.loads(meta.read_text()) if meta.exists() else {}

    def alive(self, name: str) -> bool:
        pid = self.pids.get(name)
        return pid is not None and is_alive(pid)

    def kill(self, name: str) -> None:
        """Stop one process and its children now (e.g. a SuperNode, to simulate a crash)."""
        pid = self.pids.pop(name)
        stop({pid} | descendants(pid), grace=0.5)
        self._save()

    def stop(self) -> None:
        """Stop every process this work folder started, and their children, by PID: first everything but the
        SuperLink itself (the SuperNodes, and the SuperLink's children: SuperExec, ServerApp), then the SuperLink.
        A SuperNode that stops deactivates itself at the SuperLink; one that outlives it stays "online" in the
        SuperLink's saved database for up to a minute (two 30 s heartbeats), and the SuperLink (Flower 1.39 to
        1.42) refuses to activate an online node again: the next `up` in this folder could fail (it did under
        1.39)."""
        superlink = self.pids.get("superlink")
        first = {pid for name, pid in self.pids.items() if name != "superlink"}
        for pid in {*first, *([superlink] if superlink else [])}:
            first |= descendants(pid)
        stop(first)
        if superlink:
            stop({superlink} | descendants(superlink))
        self.pids.clear()
        if self.workdir.exists():  # `down` in a folder that never held a deployment leaves none
            self._save()

    def remove(self, entries: tuple[str, ...] | set[str]) -> None:
        """Delete these entries of :data:`LAYOUT` from the work folder (only those: the folder may hold other
        files of the user's), and the folder itself if that leaves it empty."""
        for entry in set(entries) & set(LAYOUT):
            path = self.workdir / entry
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        if self.workdir.is_dir() and not any(self.workdir.iterdir()):
            self.workdir.rmdir()

    # --- the parts ------------------------------------------------------------------
    @property
    def address(self) -> str:
        """Where the CLI reaches the SuperLink (HTTP(S) under every Flower release)."""
        return f"127.0.0.1:{self.port}"

    @property
    def fleet_address(self) -> str:
        """Where SuperNodes reach the SuperLink: its own gRPC port, or the shared HTTP(S) one."""
        return f"127.0.0.1:{self.fleet_port}"

    def start_superlink(self, wait: float = 60) -> None:
        command = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                   "--database", str(self.state / "superlink.db")]
        if self.transport == "grpc":
            command += ["--fleet-api-address", self.fleet_address]
        if self.insecure:
            command.append("--insecure")
        else:
            if not (self.certs / "server.pem").exists():
                make_certificates(self.certs, self.ca, self.hosts)
            command += ["--ssl-ca-certfile", str(self.certs / "ca.crt"), "--ssl-certfile",
                        str(self.certs / "server.pem"), "--ssl-keyfile", str(self.certs / "server.key"),
                        "--enable-supernode-auth"]
        self._spawn("superlink", command)
        self.write_connection()
        deadline = time.time() + wait
        while not all(listens(f"127.0.0.1:{port}") for port in {self.port, self.fleet_port}):
            if not self.alive("superlink") or time.time() > deadline:
                raise DeploymentError(f"SuperLink did not come up; see {self.logs / 'superlink.log'}")
            time.sleep(0.5)

    def write_connection(self) -> None:
        """The CLI's connection to this SuperLink, in ``flwr-home/config.toml``."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{self.address}"']
        lines.append("insecure = true" if self.insecure else f'root-certificates = "{self.certs / "ca.crt"}"')
        self.cli_home.mkdir(parents=True, exist_ok=True)
        (self.cli_home / "config.toml").write_text("\n".join(lines) + "\n")

    def node_key(self, name: str) -> tuple[Path, Path]:
        private = self.keys / name
        return (private, private.with_name(f"{name}.pub")) if private.exists() else make_node_key(self.keys, name)

    def register(self, name: str) -> bool:
        """Register SuperNode ``name``'s public key with the SuperLink (``flwr supernode register``); False, and
        nothing done, when the SuperLink's database holds that key already (an earlier ``up`` in this folder)."""
        args = ["supernode", "register", str(self.node_key(name)[1]), CONNECTION, "--name", name]
        done = self.cli(args, check=False)
        if done.returncode == 0:
            return True
        if ALREADY_REGISTERED in done.stdout + done.stderr:
            return False
        raise DeploymentError(f"flwr {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")

    def start_supernode(self, name: str, partition_id: int, num_partitions: int, data_dir: str) -> int:
        node_config = f"partition-id={partition_id} num-partitions={num_partitions} data-dir='{data_dir}'"
        command = [str(BIN / "flower-supernode"), "--superlink", self.fleet_address, "--host", "127.0.0.1",
                   "--port", str(free_port()), "--node-config", node_config, "--max-wait-time", f"{self.node_wait:g}"]
        if self.insecure:
            command.append("--insecure")
        else:
            command += ["--root-certificates", str(self.certs / "ca.crt"),
                        "--auth-supernode-private-key", str(self.node_key(name)[0])]
        return self._spawn(name, command)

    def online_nodes(self) -> list[dict]:
        listing = json.loads(self.cli(["supernode", "list", CONNECTION, "--format", "json"]).stdout)
        return [node for node in listing.get("nodes", []) if node.get("status") == "online"]

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        """Until ``count`` SuperNodes are online; DeploymentError as soon as a SuperNode this folder started has
        exited (saying where it dialled and what is likely wrong there), or after ``timeout`` seconds."""
        deadline = time.time() + timeout
        while True:
            for name in self.pids:
                if name != "superlink" and not self.alive(name):
                    raise DeploymentError(self.exit_reason(name))
            if len(self.online_nodes()) >= count:
                return
            if time.time() > deadline:
                raise DeploymentError(f"fewer than {count} SuperNodes online after {timeout} s; see {self.logs}")
            time.sleep(1)

    def exit_reason(self, name: str) -> str:
        """Why SuperNode ``name`` exited: the address of its ``--superlink``, what answers there, its log's end."""
        command = self.identities.get(name, {}).get("command", [])
        dialled = command[command.index("--superlink") + 1] if "--superlink" in command[:-1] else self.fleet_address
        return supernode_exit(name, dialled, self.logs / f"{name}.log",
                              transport=self.transport, fleet_address=self.fleet_address, cli_address=self.address)

    # --- the CLI --------------------------------------------------------------------
    def cli(self, args: list[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "flwr"), *args], cwd=self.workdir, env=self.env(self.cli_home),
                              capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise DeploymentError(f"flwr {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def run_app(self, app_dir: Path, run_config: dict[str, Any], timeout: float = 900) -> subprocess.CompletedProcess:
        """``flwr run app_dir fedgma-deploy --stream`` against this deployment."""
        return self.cli(["run", str(app_dir), CONNECTION, "--stream", "--run-config", run_config_arg(run_config)],
                        check=False, timeout=timeout)

    def runs(self) -> list[dict]:
        listing = json.loads(self.cli(["list", CONNECTION, "--format", "json"]).stdout)
        return sorted(listing["runs"], key=lambda run: run["pending-at"], reverse=True)
