"""Deploy the app on real Flower processes: ``python -m fedgma.tools.deploy <command>``.

One machine (everything on 127.0.0.1, TLS and SuperNode authentication):

    python -m fedgma.tools.deploy up --nodes 2 --data-dir /path/to/mnist
    FLWR_HOME=deploy/run/flwr-home flwr run . fedgma-deploy --stream \
        --run-config "data-dir='/path/to/mnist' min-available-nodes=2 num-server-rounds=3"
    python -m fedgma.tools.deploy down

A later ``up`` in the same folder reuses its certificates, keys and SuperLink
database (registered keys, earlier runs); ``up --fresh`` deletes them first.

Several machines: ``certs`` on the SuperLink machine (name its host with --host),
``node-key`` on each SuperNode machine, then register each public key with
``register`` (or ``flwr supernode register``); docs/deployment.md has the steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .keys import make_certificates, make_node_key
from .local import CONNECTION, LAYOUT, NODE_WAIT_S, TRANSPORTS, Deployment, DeploymentError, default_transport

DEFAULT_WORKDIR = Path("deploy/run")
#: Rounds of the run `up` prints (and docs/deployment.md shows), a short trial: the app's default is 15.
EXAMPLE_ROUNDS = 3


def run_command(workdir: Path, data_dir: str, nodes: int) -> str:
    """The ``flwr run`` command line for a deployment in ``workdir``, as `up` prints it."""
    return (f"FLWR_HOME={workdir / 'flwr-home'} flwr run . {CONNECTION} --stream "
            f"--run-config \"data-dir='{data_dir}' min-available-nodes={nodes} num-server-rounds={EXAMPLE_ROUNDS}\"")


def _deployment(args: argparse.Namespace) -> Deployment:
    """The deployment `up` starts: refused while the folder's processes run; cleared first with ``--fresh``."""
    def read(transport: str | None) -> Deployment:
        return Deployment(args.workdir, insecure=args.insecure, port=args.port, hosts=args.host,
                          transport=transport, node_wait=args.node_wait)

    # --fresh ignores the transport meta.json recorded: one of another Flower release must not block the clean-up
    deployment = read((args.transport or default_transport()) if args.fresh else args.transport)
    if deployment.pids:
        raise SystemExit(f"{args.workdir} already runs processes {deployment.pids}; "
                         f"`python -m fedgma.tools.deploy down --workdir {args.workdir}` first")
    if not args.fresh:
        return deployment
    deployment.remove(LAYOUT)
    return read(args.transport)


def up(args: argparse.Namespace) -> None:
    try:
        deployment = _deployment(args)
    except ValueError as problem:
        raise SystemExit(str(problem)) from None
    before = {entry for entry in LAYOUT if (deployment.workdir / entry).exists()}
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else ""
    try:
        deployment.start_superlink()
        for i in range(args.nodes):
            if not args.insecure and not deployment.register(f"node-{i}"):
                print(f"node-{i}: key already registered with this folder's SuperLink (reused)")
            deployment.start_supernode(f"node-{i}", i, args.nodes, data_dir)
        deployment.wait_for_nodes(args.nodes)
    except BaseException as problem:
        deployment.stop()
        # What this `up` created goes; the logs of the processes it started stay, for the message below.
        deployment.remove(set(LAYOUT) - before - {"logs"})
        if isinstance(problem, DeploymentError):
            raise SystemExit(f"deploy up failed, stopped what it started and removed what it created "
                             f"(logs stay in {deployment.logs}):\n{problem}") from None
        raise
    mode = "insecure (no TLS, no node authentication)" if args.insecure else "TLS + SuperNode authentication"
    fleet = (f"SuperNodes over gRPC at {deployment.fleet_address}" if deployment.transport == "grpc"
             else "SuperNodes over HTTP(S), same port")
    print(f"SuperLink {deployment.address} ({fleet}), {mode}: pid {deployment.pids['superlink']}, "
          f"log {deployment.logs / 'superlink.log'}")
    for i in range(args.nodes):
        print(f"SuperNode node-{i} (partition {i} of {args.nodes}): pid {deployment.pids[f'node-{i}']}, "
              f"log {deployment.logs / f'node-{i}.log'}")
    print(f"\nRun the app (ServerApp output streams here; ClientApp output is in the SuperNode logs):\n"
          f"  {run_command(args.workdir, data_dir, args.nodes)}\n"
          f"Stop everything:\n  python -m fedgma.tools.deploy down --workdir {args.workdir}")


def down(args: argparse.Namespace) -> None:
    deployment = Deployment(args.workdir)
    stopped = dict(deployment.pids)
    deployment.stop()
    for name, note in deployment.stale.items():
        print(f"{name}: {note}")
    print(f"Stopped {stopped or 'nothing'}; logs stay in {deployment.logs}")


def status(args: argparse.Namespace) -> None:
    deployment = Deployment(args.workdir)
    for name, pid in deployment.pids.items():
        print(f"{name:<12} pid {pid:<8} {'running' if deployment.alive(name) else 'stopped'}  "
              f"log {deployment.logs / f'{name}.log'}")


def register(args: argparse.Namespace) -> None:
    deployment = Deployment(args.workdir)
    try:
        done = "Registered" if deployment.register(args.name) else "Already registered:"
    except DeploymentError as problem:
        raise SystemExit(str(problem)) from None
    private, _ = deployment.node_key(args.name)
    print(f"{done} {args.name}. On its machine, with {private} copied there:\n"
          f"  flower-supernode --superlink <superlink-host>:{deployment.fleet_port} --root-certificates ca.crt "
          f"--auth-supernode-private-key {args.name} --port 9094 --max-wait-time {deployment.node_wait:g} "
          f"--node-config \"partition-id=I num-partitions=N data-dir='/path/to/mnist'\"")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedgma.tools.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("up", help="start a SuperLink and N SuperNodes on this machine")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--data-dir", default="", help="MNIST IDX folder the SuperNodes read ('' = torchvision)")
    p.add_argument("--insecure", action="store_true", help="no TLS and no node authentication (local trials only)")
    p.add_argument("--port", type=int, default=None, help="SuperLink port (default: a free one)")
    p.add_argument("--host", action="append", default=[], help="extra host name or IP for the certificate")
    p.add_argument("--transport", choices=TRANSPORTS, default=None,
                   help=f"SuperNode <-> SuperLink: grpc (Flower <= 1.39) or http (1.40+); default here: "
                        f"{default_transport()} (from the installed Flower)")
    p.add_argument("--fresh", action="store_true",
                   help="delete this folder's earlier deployment first (certificates, keys, SuperLink database "
                        "with its runs, logs); without it a later up reuses them")
    p.add_argument("--node-wait", type=float, default=NODE_WAIT_S,
                   help=f"seconds a SuperNode tries to reach the SuperLink before giving up (flower-supernode "
                        f"--max-wait-time; default {NODE_WAIT_S:g})")
    p.set_defaults(run=up)
    for name, run, text in (("down", down, "stop everything `up` started"),
                            ("status", status, "list the processes and their logs")):
        commands.add_parser(name, help=text).set_defaults(run=run)
    p = commands.add_parser("register", help="make (if needed) and register a SuperNode key")
    p.add_argument("--name", required=True)
    p.set_defaults(run=register)
    p = commands.add_parser("certs", help="make a CA and a SuperLink certificate (multi-machine set-up)")
    p.add_argument("--out", type=Path, required=True, help="ca.crt, server.pem, server.key: for the SuperLink host")
    p.add_argument("--ca-out", type=Path, required=True,
                   help="ca.key, the CA's private key: keep it off the SuperLink host")
    p.add_argument("--host", action="append", default=[], help="SuperLink host name or IP (repeatable)")
    p.set_defaults(run=lambda a: print(make_certificates(a.out, a.ca_out, a.host)))
    p = commands.add_parser("node-key", help="make a SuperNode key pair (multi-machine set-up)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.set_defaults(run=lambda a: print(make_node_key(a.out, a.name)))
    for sub in commands.choices.values():
        if "--workdir" not in sub._option_string_actions and sub.prog.split()[-1] not in ("certs", "node-key"):
            sub.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="work folder (default: deploy/run)")
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
