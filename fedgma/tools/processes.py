"""Finding, measuring and stopping the processes a run, benchmark or test started, by PID.

Shared by :mod:`fedgma.tools.local_flower` (``flwr run`` in an isolated local
Flower), the deployment tool, the experiment runner, the benchmark and the
tests. The process table is read through ``psutil``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import psutil


def command_lines(text: str) -> dict[int, list[str]]:
    """The command line of every process whose command line contains ``text``, by PID."""
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            argv = list(process.info["cmdline"] or ())
        except (psutil.Error, TypeError):
            continue
        if text in " ".join(argv) and process.pid != os.getpid():
            found[process.pid] = argv
    return found


def pids_mentioning(text: str) -> set[int]:
    """PIDs whose command line contains ``text`` (e.g. a test's temporary folder)."""
    return set(command_lines(text))


def descendants(root: int) -> set[int]:
    """All processes below ``root`` in the process tree."""
    try:
        return {child.pid for child in psutil.Process(root).children(recursive=True)}
    except psutil.Error:
        return set()


#: How long after its start :func:`identity` waits for a process still inside ``execve`` to show its command line.
EXEC_WAIT_S = 5.0


def identity(pid: int) -> dict | None:
    """What tells this process from a later one that reuses its PID: its start time and command line.

    A process read right after ``Popen`` returns may still be inside ``execve``: the kernel has switched to
    the new program's memory (which releases the parent) but not yet written its arguments there, and
    /proc shows an empty command line. On a busy 2-core machine 851 of 1,000 reads straight after ``Popen``
    were empty; recorded so, ``deploy down`` would refuse to stop a SuperNode it had started. So an empty command
    line of a process started less than ``EXEC_WAIT_S`` ago is read again until the arguments appear (one
    that has exited, or is older, such as a kernel thread, keeps what it has)."""
    try:
        process = psutil.Process(pid)
        started, command = process.create_time(), process.cmdline()
        while (not command and time.time() < started + EXEC_WAIT_S
               and process.status() != psutil.STATUS_ZOMBIE):
            time.sleep(0.005)
            command = process.cmdline()
        return {"pid": pid, "started": started, "command": command}
    except psutil.Error:
        return None


#: How far two readings of one process's start time may differ. psutil gives it as the boot time plus the
#: (fixed) ticks since boot, and the boot time follows the wall clock: an NTP adjustment moves it, by a whole
#: second on Linux, whose /proc/stat btime is an integer. With 0.01 s, ``down`` on a loaded CI machine once
#: refused to stop a process it had itself recorded (same PID and command, so the start times had differed).
#: A PID reused by the same command line within 2 s is not a case to guard against.
START_TOLERANCE_S = 2.0


def same_process(recorded: dict) -> bool:
    """Whether the process ``recorded`` by :func:`identity` still runs (same PID, start time and command)."""
    now = identity(int(recorded.get("pid", -1))) if isinstance(recorded, dict) else None
    return (now is not None and abs(now["started"] - float(recorded.get("started", -1))) < START_TOLERANCE_S
            and now["command"] == recorded.get("command"))


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which has exited, does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_for_exit(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of ``processes`` still running after up to ``timeout`` seconds. A zombie has exited: psutil's
    ``wait_procs`` waits for one until its parent reaps it, which a parent that is still running (a SuperLink
    whose SuperExec was stopped first) may never do."""
    deadline = time.monotonic() + timeout
    alive = [process for process in processes if _running(process)]
    while alive and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(alive, timeout=0.1)
        alive = [process for process in alive if _running(process)]
    return alive


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
    alive = _wait_for_exit(processes, grace)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    _wait_for_exit(alive, grace)


def stop_trees(roots: set[int]) -> None:
    """Stop ``roots`` and every process below them."""
    pids = set(roots)
    for pid in roots:
        pids |= descendants(pid)
    stop(pids)


def stop_tree_and_mentions(text: str, roots: set[int] = frozenset()) -> None:
    """Stop ``roots``, their descendants and every process mentioning ``text`` (and its descendants)."""
    stop_trees(set(roots) | pids_mentioning(text))


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
