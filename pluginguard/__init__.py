"""PluginGuard: only signed plugins start, and each runs in a sandbox generated for it.

The package root holds the core: verification, sandbox generation and the CLI. It does no
Kubernetes I/O; the operator (``pluginguard.operator``) and the admission webhook
(``pluginguard.webhooks``) are thin layers over it.
"""

__version__ = "0.1.0"
