"""Finding, measuring and stopping the processes a benchmark or test started, by PID.

Linux ``/proc`` only, so nothing beyond the standard library is needed.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def pids_mentioning(text: str) -> set[int]:
    """PIDs whose command line contains ``text`` (e.g. a test's temporary folder)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.add(int(entry.name))
            except OSError:
                pass
    return found - {os.getpid()}


def descendants(root: int) -> set[int]:
    """All processes below ``root`` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def stop(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)


def stop_tree_and_mentions(text: str, roots: set[int] = frozenset()) -> None:
    """Stop ``roots``, their descendants and every process mentioning ``text``."""
    pids = set(roots) | pids_mentioning(text)
    for pid in list(pids):
        pids |= descendants(pid)
    stop(pids)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def rss_bytes(pids: set[int]) -> int:
    """Summed resident memory of ``pids`` (processes that ended count 0)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
