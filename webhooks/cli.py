"""``pluginguard webhook serve``: the admission webhook's entry point."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pluginguard import alerts, audit
from pluginguard.logs import configure_logging


def add_commands(commands: Any) -> None:
    webhook = commands.add_parser("webhook", help="the admission webhook")
    actions = webhook.add_subparsers(required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="serve admission requests over HTTPS")
    serve.add_argument("--tls-cert", metavar="PEM", help="serving certificate (reloaded when it changes)")
    serve.add_argument("--tls-key", metavar="PEM")
    serve.add_argument("--tls-secret", metavar="NAME",
                       help="built-in TLS instead of files: keep a CA and serving certificate "
                            "in this Secret of --namespace, made and renewed by the webhook")
    serve.add_argument("--tls-san", action="append", default=[], metavar="NAME",
                       help="a DNS name or IP address of the built-in serving certificate")
    serve.add_argument("--webhook-configuration", action="append", default=[], metavar="NAME",
                       help="the webhook configurations (validating and mutating) whose "
                            "caBundle the built-in TLS keeps current")
    serve.add_argument("--tls-refresh-seconds", type=float, default=60.0, metavar="SECONDS",
                       help="how often to look for a renewed certificate (files or Secret)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--kubeconfig", help="default: $KUBECONFIG, else in-cluster")
    serve.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"),
                       help="the webhook's own namespace, exempt from pod checks")
    serve.add_argument("--profile-delivery", choices=["node-agent", "security-profiles-operator"],
                       default="node-agent",
                       help="how seccomp profiles reach the nodes, as the operator was told: "
                            "the pods' profile path and node affinity follow from it")
    serve.add_argument("--log-format", choices=["text", "json"], default="json")
    audit.add_arguments(serve)
    alerts.add_arguments(serve)
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvloop
    from aiohttp import web
    from pluginguard.operator.cluster import ClusterState, api_client
    from pluginguard.operator.events import EventRecorder
    from pluginguard.errors import InputError
    from pluginguard.webhooks.admission import admission_view
    from pluginguard.webhooks.server import WebhookCluster, make_app
    from pluginguard.webhooks.tls import (
        CertificateFiles,
        CertificateSecret,
        ServingCertificate,
        keep_current,
    )

    configure_logging(args.log_format, verbose=args.verbose)
    if bool(args.tls_secret) == bool(args.tls_cert and args.tls_key):
        raise InputError("webhook serve", "give either --tls-cert and --tls-key, or --tls-secret")
    if args.tls_secret and not (args.namespace and args.tls_san):
        raise InputError("--tls-secret", "needs --namespace and at least one --tls-san")
    api = api_client(args.kubeconfig)
    secret = (CertificateSecret(api, namespace=args.namespace, name=args.tls_secret,
                                names=args.tls_san, configurations=args.webhook_configuration)
              if args.tls_secret else None)
    refresh = secret.refresh if secret else CertificateFiles(args.tls_cert, args.tls_key).read
    serving = ServingCertificate()
    serving.load(*refresh())
    audit_log = audit.from_arguments(args, component="webhook")
    notifier = alerts.from_arguments(args)
    state = ClusterState(api, plugin_view=admission_view).start()
    app = make_app(WebhookCluster(state, delivery=args.profile_delivery), events=EventRecorder(api, component="pluginguard-webhook"),
                   own_namespace=args.namespace, collectors=[serving.collector()],
                   audit=audit_log, alerts=notifier)
    app.cleanup_ctx.append(keep_current(serving, refresh, interval=args.tls_refresh_seconds,
                                        pending=lambda: secret is not None and not secret.published))
    try:
        web.run_app(app, host=args.host, port=args.port, ssl_context=serving.context,
                    access_log=None, print=None, loop=uvloop.new_event_loop())
    finally:
        for sink in (audit_log, notifier):
            if sink is not None:
                sink.close()
    return 0
