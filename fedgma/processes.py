"""Finding, measuring and stopping the processes a run, benchmark or test started, by PID.

Shared by :mod:`fedgma.local_flower` (``flwr run`` in an isolated local
Flower), the deployment tool, the experiment runner, the benchmark and the
tests. The process table is read through ``psutil``.
"""

from __future__ import annotations

import os
import socket
import subprocess

import psutil


def pids_mentioning(text: str) -> set[int]:
    """PIDs whose command line contains ``text`` (e.g. a test's temporary folder)."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        try:
            if text in " ".join(process.info["cmdline"] or ()):
                found.add(process.pid)
        except (psutil.Error, TypeError):
            pass
    return found - {os.getpid()}


def descendants(root: int) -> set[int]:
    """All processes below ``root`` in the process tree."""
    try:
        return {child.pid for child in psutil.Process(root).children(recursive=True)}
    except psutil.Error:
        return set()


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which has exited, does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace`` seconds."""
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            pass
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)


def stop_tree_and_mentions(text: str, roots: set[int] = frozenset()) -> None:
    """Stop ``roots``, their descendants and every process mentioning ``text``."""
    pids = set(roots) | pids_mentioning(text)
    for pid in list(pids):
        pids |= descendants(pid)
    stop(pids)


def rss_bytes(pids: set[int]) -> int:
    """Summed resident memory of ``pids`` (processes that ended count 0)."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gpu_memory_bytes(pids: set[int]) -> dict[int, int]:
    """GPU memory used by each of ``pids``, from ``nvidia-smi`` ({} where there is none)."""
    try:
        listing = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_gpu_apps(listing.stdout, pids)


def parse_gpu_apps(csv_text: str, pids: set[int]) -> dict[int, int]:
    """``nvidia-smi --query-compute-apps=pid,used_memory`` lines (MiB) -> bytes per PID in ``pids``."""
    used = {}
    for line in csv_text.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and int(pid) in pids and mib.strip().isdigit():
            used[int(pid)] = int(mib) * 2**20
    return used
