"""``pluginguard webhook serve``: the admission webhook's entry point."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pluginguard.logs import configure_logging


def add_commands(commands: Any) -> None:
    webhook = commands.add_parser("webhook", help="the admission webhook")
    actions = webhook.add_subparsers(required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="serve admission requests over HTTPS")
    serve.add_argument("--tls-cert", required=True, metavar="PEM")
    serve.add_argument("--tls-key", required=True, metavar="PEM")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--kubeconfig", help="default: $KUBECONFIG, else in-cluster")
    serve.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"),
                       help="the webhook's own namespace, exempt from pod checks")
    serve.add_argument("--log-format", choices=["text", "json"], default="json")
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web
    from kubernetes import client, config

    from pluginguard.operator.cluster import ClusterState
    from pluginguard.operator.events import EventRecorder
    from pluginguard.webhooks.server import WebhookCluster, make_app, tls_context

    configure_logging(args.log_format, verbose=args.verbose)
    context = tls_context(args.tls_cert, args.tls_key)
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG")
    if kubeconfig:
        api = config.new_client_from_config(kubeconfig)
    else:
        config.load_incluster_config()
        api = client.ApiClient()
    state = ClusterState(api).start()
    app = make_app(WebhookCluster(state), events=EventRecorder(api, component="pluginguard-webhook"),
                   own_namespace=args.namespace)
    web.run_app(app, host=args.host, port=args.port, ssl_context=context, access_log=None,
                print=None)
    return 0
