"""Why a SuperNode stopped: the address it dialled, what answers there, and the end of its log.

A SuperNode that cannot reach its SuperLink retries each request with growing
waits and, with ``--max-wait-time``, gives up after that many seconds with
Flower's exit code 305 ("could not establish a connection to the SuperLink"),
naming neither the address nor the likely cause. The gRPC set-up (Flower 1.39)
has two SuperLink ports, the Fleet API's for SuperNodes and the HTTP(S) one for
the CLI, which makes a wrong port easy to give.
"""

from __future__ import annotations

import socket
from pathlib import Path

#: Flower's exit line when a SuperNode gives up reaching its SuperLink (1.39 to 1.42).
GAVE_UP = "Exit Code: 305"
#: Flower's reason when the SuperLink answers but refuses the node (an unknown key, or a node it counts online).
REFUSED = "Failed to activate SuperNode"
LOG_LINES = 12


def listens(address: str) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def likely_cause(dialled: str, transport: str, fleet_address: str, cli_address: str) -> str:
    """What is most likely wrong with a SuperNode's ``--superlink`` address ``dialled``."""
    if not listens(dialled):
        return (f"nothing accepts connections at {dialled}: no SuperLink runs there, or the port is wrong (this "
                f"deployment's SuperNodes connect to {fleet_address})")
    if transport == "grpc" and dialled == cli_address != fleet_address:
        return (f"{dialled} is the SuperLink's HTTP(S) port, for the CLI; gRPC SuperNodes (Flower 1.39) connect to "
                f"its Fleet API port, {fleet_address} (the SuperLink's --fleet-api-address)")
    return (f"something listens at {dialled} but did not answer as a Flower Fleet API over {transport}: another "
            f"program's port, a SuperLink of a Flower release with the other transport (gRPC up to 1.39, HTTP(S) "
            f"from 1.40), or TLS on one side only (this deployment's SuperNodes connect to {fleet_address})")


def supernode_exit(name: str, dialled: str, log: Path, transport: str, fleet_address: str, cli_address: str) -> str:
    """The message for SuperNode ``name`` having exited, from its log ``log``."""
    text = log.read_text(errors="replace") if log.exists() else ""
    tail = "\n".join(text.splitlines()[-LOG_LINES:])
    if REFUSED in text:
        return (f"SuperNode {name} reached the SuperLink at {dialled}, which refused to activate it: its key is not "
                f"registered there, or the SuperLink's database still counts the node online from a session that "
                f"was not stopped (it lets go after two missed 30 s heartbeats; `deploy up --fresh` starts "
                f"clean). Its log, {log}, ends:\n{tail}")
    if GAVE_UP in text:
        return (f"SuperNode {name} gave up reaching the SuperLink at {dialled} (its --superlink; Flower exit code "
                f"305, after --max-wait-time): {likely_cause(dialled, transport, fleet_address, cli_address)}. "
                f"Its log, {log}, ends:\n{tail}")
    return f"SuperNode {name} exited; its log, {log}, ends:\n{tail}"
