"""The floor for the webhook: a bare aiohttp HTTPS server that allows every
AdmissionReview without looking at it beyond its uid.

It runs on the fastest footing aiohttp offers (uvloop, orjson), so that the webhook is
compared with the least any aiohttp server must spend on a request: TLS, HTTP, reading
the body, finding the uid, answering.
"""

from __future__ import annotations

import argparse
import ssl
import sys

import orjson
import uvloop
from aiohttp import web


def make_app(mutation: str | None = None) -> web.Application:
    """``mutation``, a base64 JSON Patch, is returned by ``/mutate/...`` as is: the answer
    PluginGuard gives there, so that the API server has the same patch to apply."""

    async def allow(request: web.Request) -> web.Response:
        review = orjson.loads(await request.read())
        response = {"uid": review["request"]["uid"], "allowed": True}
        if mutation and request.path.startswith("/mutate/"):
            response.update(patchType="JSONPatch", patch=mutation)
        answer = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "response": response}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=4 << 20)
    app.router.add_post("/{path:.*}", allow)
    app.router.add_get("/readyz", ready)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tls-cert", required=True)
    parser.add_argument("--tls-key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mutation", metavar="BASE64",
                        help="the JSON Patch (base64) to answer mutating requests with")
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    web.run_app(make_app(args.mutation), host=args.host, port=args.port, ssl_context=context,
                access_log=None, print=None, loop=uvloop.new_event_loop())
    return 0


if __name__ == "__main__":
    sys.exit(main())
