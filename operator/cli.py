"""``pluginguard operator run``: the operator's entry point."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

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
    run.add_argument("--priority", type=int, default=0)
    run.add_argument("--liveness", metavar="URL", help="e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--log-format", choices=["text", "json"], default="json")
    run.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    # Before kopf and the kubernetes client load: both read $KUBECONFIG on import.
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig

    import kopf

    from pluginguard.operator import handlers  # noqa: F401 - registers the handlers

    configure_logging(args.log_format, verbose=args.verbose)
    asyncio.run(kopf.operator(
        clusterwide=True,
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,
        priority=args.priority,
        liveness_endpoint=args.liveness,
    ))
    return 0
