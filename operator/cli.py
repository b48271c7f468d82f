"""``pluginguard operator run``: the operator's entry point."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from typing import Any

from pluginguard import alerts, audit
from pluginguard.logs import configure_logging


def add_commands(commands: Any) -> None:
    operator = commands.add_parser("operator", help="the Plugin operator")
    actions = operator.add_subparsers(required=True, metavar="ACTION")
    run = actions.add_parser("run", help="reconcile Plugins until stopped")
    run.add_argument("--kubeconfig", help="default: $KUBECONFIG, else in-cluster")
    run.add_argument("--peering", default="pluginguard",
                     help="kopf peering name; replicas with one name elect one active")
    run.add_argument("--standalone", action="store_true",
                     help="no peering (a single replica, or tests)")
    run.add_argument("--priority", type=int, default=None,
                     help="peering priority; by default a random one, so replicas never tie "
                          "(kopf pauses every replica of a tie)")
    run.add_argument("--peering-lifetime", type=int, default=60, metavar="SECONDS",
                     help="how long a silent replica counts as alive")
    run.add_argument("--liveness", metavar="URL", help="e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--profile-delivery", choices=["node-agent", "security-profiles-operator"],
                     default="node-agent",
                     help="how seccomp profiles reach the nodes: PluginGuard's node agent "
                          "(profile ConfigMaps), or the Security Profiles Operator "
                          "(its cluster-scoped SeccompProfile objects, v0.9 or later)")
    run.add_argument("--log-format", choices=["text", "json"], default="json")
    audit.add_arguments(run)
    alerts.add_arguments(run)
    run.set_defaults(run=_run)

    agent = commands.add_parser("node-agent", help="install seccomp profiles on this node")
    agent.add_argument("--root", default="/var/lib/kubelet/seccomp",
                       help="the kubelet's seccomp directory (profiles go to ROOT/pluginguard)")
    agent.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                       help="this node's name (default: $NODE_NAME)")
    agent.add_argument("--kubeconfig", help="default: $KUBECONFIG, else in-cluster")
    agent.add_argument("--log-format", choices=["text", "json"], default="json")
    agent.set_defaults(run=_node_agent)


def _run(args: argparse.Namespace) -> int:
    # Before kopf and the kubernetes client load: both read $KUBECONFIG on import.
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig

    import kopf

    from pluginguard.operator import handlers  # noqa: F401 - registers the handlers

    configure_logging(args.log_format, verbose=args.verbose)
    handlers.PEERING_LIFETIME = args.peering_lifetime
    handlers.PROFILE_DELIVERY = args.profile_delivery
    handlers.AUDIT = audit.from_arguments(args, component="operator")
    handlers.ALERTS = alerts.from_arguments(args)
    priority = args.priority if args.priority is not None else secrets.randbelow(2**31 - 1) + 1
    try:
        asyncio.run(kopf.operator(
            clusterwide=True,
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            priority=priority,
            liveness_endpoint=args.liveness,
        ))
    finally:
        for sink in (handlers.AUDIT, handlers.ALERTS):
            if sink is not None:
                sink.close()
    return 0


def _node_agent(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pluginguard.errors import InputError
    from pluginguard.operator.cluster import api_client
    from pluginguard.operator.node_agent import NodeAgent

    if not args.node_name:
        raise InputError("--node-name", "is required (or set $NODE_NAME, e.g. from the downward API)")
    configure_logging(args.log_format, verbose=args.verbose)
    NodeAgent(api_client(args.kubeconfig), root=Path(args.root), node_name=args.node_name).run()
    return 0
