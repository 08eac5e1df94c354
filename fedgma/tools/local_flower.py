"""Run ``flwr run`` in an isolated local Flower setup and measure it.

:class:`LocalFlower` gives one process tree of its own: a temporary FLWR_HOME and
Ray temp dir, free 127.0.0.1 ports for the local SuperLink, runtime dependency
installation off, and this environment's ``bin`` first on PATH (``flwr`` starts
``flower-superlink`` from PATH). Closing it stops, by PID, every process it
started, including the detached SuperLink and Ray. The benchmark, the
experiment runner and the tests use it.

Flower keeps a local SuperLink's state in ``FLWR_HOME/local-superlink/state.db``,
so a second local SuperLink started for the same FLWR_HOME (a ``flwr list`` run
by hand with this FLWR_HOME but without its port variables) shares the run queue:
its SuperExec claims some of the runs submitted to the first one and starts them
with its own settings (runtime dependency installation on, for one; runs then fail
with Flower's exit code 608). So every :meth:`LocalFlower.run` first stops such
SuperLinks and says so.

Every :meth:`LocalFlower.run` hands ``flwr run`` a copy of the app folder without
what its ``.gitignore`` leaves out (:func:`staged_app`): Flower builds the app's FAB
by walking every file under the folder before it applies ``.gitignore``
(``flwr/cli/utils.py``, ``collect_files``), and a virtual environment inside the
folder, the README's layout, is some 60,000 files of that walk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from flwr.cli.utils import build_pathspec, load_gitignore_patterns

from .processes import (command_lines, descendants, free_port, gpu_memory_bytes, pids_mentioning, rss_bytes,
                        stop_tree_and_mentions, stop_trees)

FLWR = str(Path(sys.executable).with_name("flwr"))


def run_config_arg(config: dict[str, Any]) -> str:
    """A run-config dict as ``flwr run --run-config`` text (strings single-quoted)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return f"'{v}'" if isinstance(v, str) else repr(v)
    return " ".join(f"{key}={value(v)}" for key, v in config.items())


def foreign_superlinks(commands: dict[int, list[str]], port: str) -> set[int]:
    """PIDs, among ``commands`` (PID -> argv), of the ``flower-superlink`` processes not serving ``port``."""
    found = set()
    for pid, argv in commands.items():
        if any(Path(arg).name == "flower-superlink" for arg in argv[:2]):
            served = argv[argv.index("--port") + 1] if "--port" in argv[:-1] else None
            if served != port:
                found.add(pid)
    return found


def staged_app(app_dir: Path, into: Path) -> Path:
    """Copy ``app_dir`` into the (new) folder ``into`` without ``.git`` (a folder, or a worktree's file),
    symbolic links and what the app's ``.gitignore`` ignores, read by Flower's own functions, so ``flwr run``
    of the copy sends the FAB Flower builds from ``app_dir``. A folder the ``.gitignore`` ignores is not
    entered, unless a negated pattern (``!``) could bring a file inside it back."""
    patterns = load_gitignore_patterns(app_dir / ".gitignore")  # [] without one
    ignored = build_pathspec(patterns).match_file
    prune = not any(pattern.startswith("!") for pattern in patterns)

    def kept(path: Path) -> bool:
        return path.name != ".git" and not path.is_symlink()

    for folder, subfolders, files in os.walk(app_dir):
        relative = Path(folder).relative_to(app_dir)
        subfolders[:] = [name for name in subfolders if kept(Path(folder, name))
                         and not (prune and ignored(f"{(relative / name).as_posix()}/"))]
        (into / relative).mkdir(parents=True, exist_ok=True)
        for name in files:
            if kept(Path(folder, name)) and not ignored((relative / name).as_posix()):
                shutil.copy2(Path(folder, name), into / relative / name)
    return into


@dataclass
class FlowerRun:
    """What one ``flwr run`` did: its output (stdout and stderr, interleaved), wall time
    and, when :meth:`LocalFlower.run` sampled it, the memory of its process tree (0 and no
    samples otherwise)."""

    output: str
    returncode: int
    wall_seconds: float
    peak_rss_bytes: int
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (unix time, bytes)
    peak_gpu_bytes_per_process: int = 0  # the largest GPU memory of one process (a client actor); 0 without GPUs

    def rss_at(self, when: float) -> int:
        """The last RSS sample taken at or before unix time ``when`` (0 if none)."""
        return max(((t, b) for t, b in self.rss_samples if t <= when), default=(0.0, 0))[1]


class LocalFlower:
    """An isolated local Flower: ``with LocalFlower() as flower: flower.run(...)``."""

    def __init__(self, root: Path | None = None, env: dict[str, str] | None = None) -> None:
        """``env`` adds to the environment of ``flwr`` and what it starts (e.g. ``RAY_ADDRESS``)."""
        self.owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="fedgma-flwr-")) if root is None else Path(root)
        (self.root / "ray").mkdir(parents=True, exist_ok=True)
        # Staged app copies (``run``): outside ``root``, so no process of a run names this setup's folder
        # in its command line for them (``kill`` and the memory samples find processes by that name).
        self.apps = Path(tempfile.mkdtemp(prefix="fedgma-apps-"))
        # What this setup's processes have in their command lines (FLWR_HOME, Ray's folder), with the
        # separator so that a setup in /tmp/flwr1 does not match, and stop, the processes of /tmp/flwr10.
        self.mention = f"{self.root}{os.sep}"
        self.env = os.environ | {
            "FLWR_HOME": str(self.root / "home"), "RAY_TMPDIR": str(self.root / "ray"),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
            "PATH": f"{Path(FLWR).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        } | (env or {})

    def __enter__(self) -> LocalFlower:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def kill(self) -> None:
        """Stop every process this setup started (SuperLink, Ray, apps), by PID; keep its folder.

        A later :meth:`run` starts a fresh local SuperLink (what a user sees after
        an interrupted ``flwr run``)."""
        stop_tree_and_mentions(self.mention)

    def stop_foreign_superlinks(self) -> set[int]:
        """Stop the local SuperLinks that use this setup's folder but not its port (see the module
        docstring), with their SuperExecs and the runs those took; their PIDs."""
        port = self.env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
        foreign = foreign_superlinks(command_lines(self.mention), port)
        if foreign:
            print(f"warning: stopping SuperLink process(es) {sorted(foreign)}: they use this setup's FLWR_HOME "
                  f"({self.env['FLWR_HOME']}) but not its port {port}, and would take its runs; to look at "
                  "this setup's runs, use its environment (LocalFlower.runs())", file=sys.stderr, flush=True)
            stop_trees(foreign)
        return foreign

    def close(self) -> None:
        """Stop every process this setup started, by PID, and remove its folder if it made it."""
        self.kill()
        shutil.rmtree(self.apps, ignore_errors=True)
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def run(self, app_dir: Path, run_config: dict[str, Any] | str, supernodes: int, cpus_per_client: int = 1,
            timeout: float = 1800, sample_every: float | None = None,
            on_line: Callable[[str], None] | None = None, gpus_per_client: float = 0.0) -> FlowerRun:
        """``flwr run app_dir --stream`` on a simulated federation of ``supernodes`` clients.

        ``on_line`` sees every output line as it arrives (progress reporting);
        after ``timeout`` seconds the command is stopped and the run so far returned.
        With ``sample_every`` (seconds), the memory of the process tree is sampled at
        that interval (``peak_rss_bytes``, ``rss_samples``); off by default, because one
        sample walks every process through psutil: 26 ms of CPU on a 2-core machine,
        a tenth of a core at 0.25 s, taken from the clients of every run (measured
        against a running seed-setup grid). Only the benchmark asks for it.
        With ``gpus_per_client`` > 0, Ray gives each client that fraction of a GPU
        and, when sampling, the GPU memory of every process is sampled too (``nvidia-smi``).
        """
        self.stop_foreign_superlinks()
        app = staged_app(Path(app_dir).resolve(), Path(tempfile.mkdtemp(prefix="app-", dir=self.apps)))
        config = run_config if isinstance(run_config, str) else run_config_arg(run_config)
        federation = f"num-supernodes={supernodes} client-resources-num-cpus={cpus_per_client}"
        if gpus_per_client:
            federation += f" client-resources-num-gpus={gpus_per_client}"
        command = [FLWR, "run", str(app), "--stream", "--run-config", config, "--federation-config", federation]
        samples: list[tuple[float, int]] = []
        gpu_peak = 0
        done = threading.Event()
        start = time.perf_counter()

        def sample() -> None:
            nonlocal gpu_peak
            while not done.wait(sample_every):
                pids = pids_mentioning(self.mention)
                for pid in list(pids):
                    pids |= descendants(pid)
                samples.append((time.time(), rss_bytes(pids)))
                if gpus_per_client:
                    gpu_peak = max([gpu_peak, *gpu_memory_bytes(pids).values()])

        sampler = None if sample_every is None else threading.Thread(target=sample, daemon=True)
        if sampler is not None:
            sampler.start()
        lines: list[str] = []
        process = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            for line in process.stdout:
                lines.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            process.wait()
        finally:
            killer.cancel()
            done.set()
            if sampler is not None:
                sampler.join()
            shutil.rmtree(app, ignore_errors=True)
        return FlowerRun("".join(lines), process.returncode, time.perf_counter() - start,
                         max((b for _, b in samples), default=0), samples, gpu_peak)

    def runs(self) -> list[dict]:
        """``flwr list`` of this setup's SuperLink, newest run first."""
        listing = subprocess.run([FLWR, "list", "--format", "json"], cwd=self.root, env=self.env,
                                 capture_output=True, text=True, timeout=120)
        return sorted(json.loads(listing.stdout)["runs"], key=lambda run: run["pending-at"], reverse=True)


def stop_local_superlink(flwr_home: Path) -> set[int]:
    """Stop, by PID, the local SuperLink that ``flwr run`` left running for ``flwr_home`` (it keeps its
    state in ``<flwr_home>/local-superlink/``, which its command line names) and its children; no other
    SuperLink on the machine. Returns the PIDs stopped."""
    marker = str(Path(flwr_home).expanduser().resolve() / "local-superlink") + os.sep
    pids = {pid for pid, argv in command_lines(marker).items()
            if any(Path(arg).name == "flower-superlink" for arg in argv[:2])}
    stop_trees(pids)
    return pids


def main(argv: list[str] | None = None) -> int:
    """``python -m fedgma.tools.local_flower stop-superlink``: the precise replacement for ``pkill -f flower-superlink``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fedgma.tools.local_flower", description=main.__doc__)
    parser.add_argument("command", choices=["stop-superlink"])
    parser.add_argument("--flwr-home", type=Path, default=Path(os.environ.get("FLWR_HOME", "~/.flwr")),
                        help="the FLWR_HOME whose local SuperLink to stop (default: $FLWR_HOME or ~/.flwr)")
    args = parser.parse_args(argv)
    stopped = stop_local_superlink(args.flwr_home)
    print(f"Stopped the local SuperLink of {args.flwr_home}: PID {', '.join(map(str, sorted(stopped)))}" if stopped
          else f"No local SuperLink of {args.flwr_home} is running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
