"""pluginguard: sign and verify plugins offline, print their sandbox, and run the
operator and the admission webhook.

Results go to stdout, diagnostics to stderr. Exit codes: 0 success (verified),
1 refused, 2 unusable input.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import stat
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from pluginguard import keys, signing
from pluginguard.audit import read_hmac_key, verify_log
from pluginguard.errors import InputError, PluginGuardError, shown
from pluginguard.manifest import (
    Plugin,
    dump_manifest,
    field,
    load_documents,
    optional,
    parse_plugin,
)
from pluginguard.policy import MaterialUnavailable, TrustPolicy, compile_policy
from pluginguard.sandbox import limits, normalize_sandbox, seccomp_profile
from pluginguard.verdict import Verdict
from pluginguard.verify import verify_plugin

EXIT_REFUSED = 1
EXIT_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    except InputError as error:
        _fail(args, error)
        return EXIT_INPUT
    except PluginGuardError as error:
        _fail(args, error)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`); nothing more to say to it.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


def _fail(args: argparse.Namespace, error: Exception) -> None:
    if args.verbose:
        logging.exception("failed")
    print(f"pluginguard: {error}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other message (its default is
    the usage block, then the error). Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        one_line = message.replace("\n", "\\n")  # an argument may hold a line break
        self.exit(EXIT_INPUT, f"{self.prog}: error: {one_line} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pluginguard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="show debug logs and tracebacks")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    keygen = commands.add_parser("keygen", help="generate a signing key pair")
    keygen.add_argument("--algorithm", required=True, type=str.lower,
                        choices=[a.lower() for a in keys.ALGORITHMS])
    keygen.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.key and PREFIX.pub")
    keygen.set_defaults(run=_keygen)

    sign = commands.add_parser("sign", help="sign a Plugin manifest")
    sign.add_argument("plugin", metavar="PLUGIN.yaml")
    sign.add_argument("--key", required=True, metavar="KEY.pem")
    sign.add_argument("--cert", metavar="CHAIN.pem", help="signer certificate, then intermediates")
    sign.add_argument("--format", choices=["dsse", "hkp"], default="dsse")
    sign.add_argument("--artifact", metavar="FILE", help="compute spec.artifact.digest from FILE")
    sign.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    sign.set_defaults(run=_sign)

    verify = commands.add_parser(
        "verify", help="verify the Plugins of one manifest file against trust policies",
        description="Verify the Plugins of one manifest file against trust policies.")
    verify.add_argument("plugin", metavar="PLUGIN.yaml",
                        help="a file of one or more Plugin documents; each is verified")
    verify.add_argument("--policy", action="append", required=True, metavar="POLICY.yaml",
                        help="PluginTrustPolicy manifests, with the Secrets and ConfigMaps they reference")
    verify.add_argument("--at", type=_timestamp, metavar="RFC3339", help="verify as of this time")
    verify.add_argument("--namespace-label", action="append", default=[], metavar="KEY=VALUE",
                        help="a label of the plugin's namespace, for policies' namespaceSelector")
    verify.add_argument("--output", choices=["text", "json"], default="text",
                        help="json: one object, or an array of them when the file holds "
                             "several Plugins")
    verify.set_defaults(run=_verify)

    for name, run, text in (("seccomp", _seccomp, "print the plugin's seccomp profile"),
                            ("limits", _limits, "print the plugin's resource limits")):
        command = commands.add_parser(name, help=text)
        command.add_argument("plugin", metavar="PLUGIN.yaml")
        command.set_defaults(run=run)

    audit = commands.add_parser("audit", help="check PluginGuard's audit log")
    audit_actions = audit.add_subparsers(required=True, metavar="ACTION")
    check = audit_actions.add_parser("verify", help="find changed, deleted, inserted or reordered records")
    check.add_argument("log", metavar="FILE")
    check.add_argument("--hmac-key-file", metavar="KEY",
                       help="check every record's HMAC too (default: $PLUGINGUARD_AUDIT_HMAC_KEY)")
    check.add_argument("--anchor", metavar="SHA256", type=_anchor,
                       help="a record hash noted earlier (the last hash a verify printed): "
                            "the log must still hold it, which shows it was not cut short")
    check.set_defaults(run=_audit_verify)

    _add_deployables(commands)
    return parser


def _add_deployables(commands: Any) -> None:
    """The operator's and the webhook's entry points; their modules import lazily."""
    from pluginguard.operator.cli import add_commands as add_operator
    from pluginguard.webhooks.cli import add_commands as add_webhook

    add_operator(commands)
    add_webhook(commands)


# RFC 3339's date-time: a full date, T, a full time and a zone. fromisoformat takes far
# more (a date alone, a space, no zone), and a time without a zone is not one instant.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_ANCHOR = re.compile(r"(sha256:)?[0-9a-fA-F]{64}")


def _timestamp(text: str) -> datetime:
    example = "such as 2026-01-31T12:00:00Z"
    if not _RFC3339.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not an RFC 3339 time {example}")
    normal = text.upper().replace("Z", "+00:00")
    # fromisoformat takes at most six digits of a second's fraction; finer is noise.
    normal = re.sub(r"(\.\d{6})\d+", r"\1", normal)
    try:
        return datetime.fromisoformat(normal)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not a valid time: a field of it is out of range"
        ) from None


def _anchor(text: str) -> str:
    if not _ANCHOR.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not a record hash (64 hex digits, optionally after sha256:)"
        )
    return text


def _audit_verify(args: argparse.Namespace) -> int:
    result = verify_log(args.log, key=read_hmac_key(args.hmac_key_file), anchor=args.anchor)
    listed = 50
    for problem in result.problems[:listed]:
        print(problem)
    if len(result.problems) > listed:
        print(f"... and {len(result.problems) - listed} more problems")
    for note in result.notes:
        print(f"note: {note}")
    print(result.summary())
    return 0 if result.intact else EXIT_REFUSED


def _keygen(args: argparse.Namespace) -> int:
    key = keys.generate_private_key(args.algorithm)
    private, public = signing.write_keypair(key, args.out)
    print(f"wrote {private} and {public} (keyid {keys.fingerprint(key.public_key())})")
    return 0


def _sign(args: argparse.Namespace) -> int:
    document = _one_plugin_document(args.plugin)
    key = keys.load_private_key(_read_bytes(args.key), where=args.key)
    certificates = keys.load_certificates(_read_bytes(args.cert), where=args.cert) if args.cert else []
    signing.check_certificate(key, certificates, where=args.cert)
    digest = None
    if args.artifact:
        try:
            with open(args.artifact, "rb") as artifact:
                digest = signing.file_digest(artifact)
        except OSError as error:
            raise InputError(args.artifact, f"cannot read: {error}") from error
    try:
        signed = signing.sign_manifest(document, key=key, certificates=certificates,
                                       form=args.format, digest=digest)
    except InputError as error:
        raise error.within(args.plugin) from None
    text = dump_manifest(signed)
    if args.output is not None:
        _write_output(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _verify(args: argparse.Namespace) -> int:
    documents = load_documents(args.plugin)
    if not documents:
        raise InputError(args.plugin, "holds no Plugin")
    places = [args.plugin] if len(documents) == 1 else [
        f"{args.plugin}: document {index + 1}" for index in range(len(documents))]
    plugins = [parse_plugin(doc, where=where) for doc, where in zip(documents, places)]
    for plugin, where in zip(plugins, places):
        # A sandbox that does not compile is a manifest to fix, not a refusal: the
        # engine (for the webhook and the operator) refuses such a Plugin, the CLI
        # names the field, as `seccomp` and `limits` do.
        _sandbox(plugin, where)
    labels = _labels(args.namespace_label)
    policies = _load_policies(args.policy)
    verdicts = [verify_plugin(p, policies, namespace_labels=labels, at=args.at) for p in plugins]
    if args.output == "json":
        rendered = [{"plugin": f"{p.namespace}/{p.name}", **v.as_dict()} for p, v in zip(plugins, verdicts)]
        print(json.dumps(rendered[0] if len(rendered) == 1 else rendered, indent=2))
    else:
        for plugin, verdict in zip(plugins, verdicts):
            print(_render(plugin, verdict))
    return 0 if all(v.verified for v in verdicts) else EXIT_REFUSED


def _render(plugin: Plugin, verdict: Verdict) -> str:
    status = "verified" if verdict.verified else "REFUSED"
    lines = [f"{plugin.namespace}/{plugin.name}: {status} ({verdict.reason}) {verdict.message}"]
    if verdict.signer:
        lines.append(f"  signer: {verdict.signer}")
    if verdict.signer_key:
        lines.append(f"  signer key: {verdict.signer_key}")
    if verdict.algorithm:
        lines.append(f"  algorithm: {verdict.algorithm}")
    if len(verdict.chain) > 1:
        lines.append(f"  chain: {' <- '.join(verdict.chain)}")
    return "\n".join(lines)


def _seccomp(args: argparse.Namespace) -> int:
    plugin = _plugin(args.plugin)
    sys.stdout.buffer.write(seccomp_profile(_sandbox(plugin, args.plugin)).json_bytes)
    return 0


def _limits(args: argparse.Namespace) -> int:
    plugin = _plugin(args.plugin)
    ceiling = limits(_sandbox(plugin, args.plugin))
    print(json.dumps({"kubernetes": ceiling.kubernetes(), "cgroup": ceiling.cgroup()}, indent=2))
    return 0


def _plugin(path: str) -> Plugin:
    return parse_plugin(_one_plugin_document(path), where=path)


def _sandbox(plugin: Plugin, path: str) -> dict[str, Any]:
    try:
        return normalize_sandbox(plugin.sandbox)
    except InputError as error:
        raise error.within(path) from None


def _one_plugin_document(path: str) -> dict[str, Any]:
    documents = [d for d in load_documents(path) if d.get("kind") == "Plugin"]
    if len(documents) != 1:
        raise InputError(path, f"expected one Plugin document, found {len(documents)}")
    return documents[0]


class ManifestMaterial:
    """Trust material for offline verification: Secrets and ConfigMaps given as manifests,
    CRLs fetched from their URLs."""

    def __init__(self, documents: Sequence[dict[str, Any]], *,
                 places: Sequence[str] | None = None, timeout: float = 5.0) -> None:
        """Only the Secrets and ConfigMaps among ``documents`` count; ``places`` says
        where each document was read (``policy.yaml: document 2``), for messages.

        Raises InputError for one whose metadata is off, and for two of one name: the
        cluster holds one object per name, so which of them to believe is a guess.
        """
        if places is None:
            places = [f"document {index + 1}" for index in range(len(documents))]
        self.objects: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
        for where, document in zip(places, documents, strict=True):
            kind = document.get("kind")
            if kind not in ("Secret", "ConfigMap"):
                continue
            name = field(document, "metadata.name", str, where=where)
            namespace = optional(document, "metadata.namespace", str, "default", where=where)
            earlier = self.objects.get((kind, namespace, name))
            if earlier is not None:
                raise InputError(where, f"{kind} {namespace}/{name} is given twice, "
                                        f"here and in {earlier[0]}; give it once")
            self.objects[(kind, namespace, name)] = (where, document)
        self.timeout = timeout

    def reference(self, kind: str, namespace: str, name: str, key: str) -> bytes:
        """The value of ``key``; raises MaterialUnavailable when the object or the key
        is missing, InputError when the manifest's value is unusable."""
        found = self.objects.get((kind, namespace, name))
        if found is None:
            raise MaterialUnavailable(f"{kind} {namespace}/{name} was not given (add its manifest with --policy)")
        where, document = found
        where = f"{where}: {kind} {namespace}/{name}"
        # As the API server does on a write, a Secret's stringData wins over its data.
        places = ("stringData", "data") if kind == "Secret" else ("data",)
        for place in places:
            values = optional(document, place, dict, {}, where=where)
            if key not in values:
                continue
            value = values[key]
            if not isinstance(value, str):
                raise InputError(where, f"{place}.{key} must be a string")
            if kind == "Secret" and place == "data":
                return _secret_value(value, where=where, place=f"data.{key}")
            return value.encode()
        raise MaterialUnavailable(f"{kind} {namespace}/{name} has no key {key}")

    def url(self, url: str) -> bytes:
        if not url.startswith(("http://", "https://")):
            raise MaterialUnavailable(f"{url}: only http and https CRL URLs are fetched")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310
                return response.read(16 << 20)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise MaterialUnavailable(f"cannot fetch {url}: {error}") from error


def _load_policies(paths: Sequence[str]) -> list[TrustPolicy]:
    read = [(f"{path}: document {index + 1}", doc) for path in paths
            for index, doc in enumerate(load_documents(path))]
    material = ManifestMaterial([doc for _, doc in read], places=[where for where, _ in read])
    policies = [compile_policy(doc, material=material, where=where)
                for where, doc in read if doc.get("kind") == "PluginTrustPolicy"]
    if not policies:
        raise InputError(", ".join(paths), "no PluginTrustPolicy found")
    return policies


def _secret_value(text: str, *, where: str, place: str) -> bytes:
    # Strictly, as the API server reads a Secret: line breaks are skipped, any other
    # character outside the alphabet is an error.
    try:
        return base64.b64decode(text.replace("\n", "").replace("\r", ""), validate=True)
    except ValueError as error:  # binascii.Error, or a character outside ASCII
        raise InputError(where, f"{place} is not valid base64") from error


# Kubernetes' rules for label keys and values (apimachinery's validation package): a key
# is a name, optionally after a DNS-subdomain prefix and a slash; a value is a name or "".
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _labels(texts: Sequence[str]) -> dict[str, str]:
    """The --namespace-label arguments as a label map; InputError for a malformed one."""
    labels: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep:
            raise InputError("--namespace-label", f"{shown(text)} is not KEY=VALUE")
        problem = _label_key_problem(key) or _label_value_problem(value)
        if problem:
            raise InputError("--namespace-label", f"{shown(text)}: {problem}")
        if labels.get(key, value) != value:
            raise InputError("--namespace-label", f"{shown(key)} is given twice, with "
                                                  "different values; a namespace has one")
        labels[key] = value
    return labels


def _label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "the key's prefix must be a DNS subdomain (lower case, such as example.com)"
    if not (len(name) <= 63 and _LABEL_NAME.fullmatch(name)):
        return ("the key's name must be 1-63 letters, digits, '-', '_' or '.', "
                "beginning and ending with a letter or digit")
    return None


def _label_value_problem(value: str) -> str | None:
    if value and not (len(value) <= 63 and _LABEL_NAME.fullmatch(value)):
        return ("the value must be empty or 1-63 letters, digits, '-', '_' or '.', "
                "beginning and ending with a letter or digit")
    return None


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InputError(path, f"cannot read: {error}") from error


def _write_output(path: str, text: str) -> None:
    """Write a manifest to ``path``: never half of one, never over something else.

    A symlink is followed to its target. A regular file (or a new one) is replaced by
    renaming a complete temporary file over it; anything else that exists (a device,
    a FIFO, /dev/stdout) is written to directly, as renaming would replace the node.
    """
    if not path:
        raise InputError("-o", "is empty; give a file name")
    try:
        mode: int | None = os.stat(path).st_mode  # through symlinks, /dev/stdout's too
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise InputError(path, f"cannot write: {error.strerror}") from error
    if mode is not None and stat.S_ISDIR(mode):
        raise InputError(path, "is a directory; give a file name")
    try:
        if mode is not None and not stat.S_ISREG(mode):
            with open(path, "w") as out:
                out.write(text)
        else:
            _replace(Path(os.path.realpath(path)), text, mode=mode)
    except OSError as error:
        raise InputError(path, f"cannot write: {error.strerror or error}") from error


def _replace(target: Path, text: str, *, mode: int | None) -> None:
    """Rename a new file holding ``text`` over ``target``, keeping its permissions."""
    # mkstemp: a name nobody else holds, opened O_EXCL so that nothing planted there
    # (a symlink, a directory) is followed or overwritten.
    descriptor, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), stat.S_IMODE(mode) if mode is not None else _new_file_mode())
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _new_file_mode() -> int:
    """The mode open() would give a new file: 0666 less the umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


if __name__ == "__main__":
    sys.exit(main())
