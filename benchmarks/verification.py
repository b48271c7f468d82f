"""Verification cost per algorithm and format, beside its floor.

For every algorithm and signature format four figures, each the median of repeated
``timeit`` runs, in microseconds per verification:

  floor        the bare ``cryptography`` verify call, key and signature already loaded;
  floor_parse  the floor plus what any verifier must parse first: the public key's PEM,
               the envelope's base64 (and, for dsse, the pre-authentication encoding and
               the JSON of the signed Statement), or the .sig file's PEM block (hkp);
  engine_cold  PluginGuard from scratch: the policy compiled from its manifest (which
               parses the key's PEM, as floor_parse does), the Plugin parsed, then
               ``verify_plugin``, nothing cached;
  engine_cold_compiled
               the same with the policy compiled once beforehand, as the webhook and
               the operator hold it between policy changes;
  engine_warm  a verdict already cached, looked up through ``WebhookCluster.verdict``.

The ratio reported against the target is engine_cold / floor_parse.

Chains (ECDSA-P256, 0 to 3 intermediates) are measured the same way: the floor there
verifies every certificate's signature and the payload's, and parses the chain's PEM.

The single-flight figure sends concurrent requests for one uncached Plugin through the
webhook's aiohttp application in this process and counts the verifications they caused.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import os
import statistics
import timeit
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pluginguard.webhooks.server import WebhookCluster, make_app

from pluginguard import keys
from pluginguard.manifest import parse_plugin
from pluginguard.policy import NoMaterial, TrustPolicy, compile_policy
from pluginguard.signing import sign_manifest
from pluginguard.verify import verify_plugin

FORMATS = ("dsse", "hkp")
NAMESPACE = "bench"
DIGEST = "sha256:" + "5e" * 32
SANDBOX: dict[str, Any] = {
    "seccomp": {"defaultAction": "errno", "allow": ["ptrace"], "deny": ["mount"]},
    "resources": {"maxMemoryMB": 256, "maxCPUPercent": 50, "maxProcesses": 64},
    "network": {"egress": "none"},
    "filesystem": {"readOnlyRootFilesystem": True, "writablePaths": ["/tmp"]},
}
_EC_HASHES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384}


@dataclass(frozen=True)
class Timing:
    """How a figure is timed: ``repeat`` runs of at least ``min_seconds`` each."""

    repeat: int = 15
    min_seconds: float = 0.02
    number: int | None = None  # calls per run; None lets timeit choose from min_seconds


def medians_us(calls: Mapping[str, Callable[[], object]], timing: Timing) -> dict[str, float]:
    """Median time of one call of each of ``calls``, in microseconds.

    The calls are timed in turns (one run of each, then the next round), so that a burst
    of load from elsewhere on the machine falls on all of them alike, not on one.
    """
    timers = {name: timeit.Timer(call) for name, call in calls.items()}
    numbers = {}
    for name, timer in timers.items():
        number = timing.number or 1
        while timing.number is None and timer.timeit(number) < timing.min_seconds:
            number *= 2
        numbers[name] = number
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(timing.repeat):
        for name, timer in timers.items():
            runs[name].append(timer.timeit(numbers[name]) / numbers[name])
    return {name: round(statistics.median(values) * 1e6, 2) for name, values in runs.items()}


def plugin_document(name: str = "bench-plugin", *, namespace: str = NAMESPACE,
                    image: str = "registry.example/bench/plugin") -> dict[str, Any]:
    return {
        "apiVersion": "pluginguard.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "spec": {"artifact": {"digest": DIGEST, "image": image},
                 "sandbox": copy.deepcopy(SANDBOX)},
    }


def policy_document(*, form: str, public_pem: str = "", root_pem: str = "",
                    max_chain_length: int = 3) -> dict[str, Any]:
    spec: dict[str, Any] = {"requireSignedSandbox": form == "dsse",
                            "maxCertChainLength": max_chain_length}
    if public_pem:
        spec["trustedKeys"] = [{"name": "publisher", "publicKey": public_pem}]
    if root_pem:
        spec["trustedRoots"] = [{"name": "root", "certificates": root_pem}]
    return {"apiVersion": "pluginguard.dev/v1alpha1", "kind": "PluginTrustPolicy",
            "metadata": {"name": "bench"}, "spec": spec}


def _public_pem(key: keys.PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# --------------------------------------------------------------------- the floor --


def bare_verifier(key: keys.PublicKey, *, prehashed: bool) -> Callable[[bytes, bytes], None]:
    """The one cryptography call that checks a signature, its arguments built once."""
    if isinstance(key, rsa.RSAPublicKey):
        scheme = padding.PKCS1v15()
        algorithm: Any = Prehashed(hashes.SHA256()) if prehashed else hashes.SHA256()
        return lambda signature, message: key.verify(signature, message, scheme, algorithm)
    if isinstance(key, ec.EllipticCurvePublicKey):
        digest: Any = Prehashed(hashes.SHA256()) if prehashed else _EC_HASHES[key.curve.name]()
        ecdsa = ec.ECDSA(digest)
        return lambda signature, message: key.verify(signature, message, ecdsa)
    assert isinstance(key, ed25519.Ed25519PublicKey)
    return key.verify


def _pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def floor_parse_dsse(public_pem: bytes, envelope: Mapping[str, Any], *,
                     prehashed: bool = False) -> None:
    """The least a dsse verifier does: load the key, decode, verify, read the Statement."""
    key = serialization.load_pem_public_key(public_pem)
    payload = base64.b64decode(envelope["payload"])
    signature = base64.b64decode(envelope["signatures"][0]["sig"])
    bare_verifier(key, prehashed=prehashed)(signature, _pae(envelope["payloadType"], payload))  # type: ignore[arg-type]
    json.loads(payload)


def floor_parse_hkp(public_pem: bytes, sig_text: str, digest: str) -> None:
    """The least an hkp verifier does: load the key, decode the PEM block, verify."""
    key = serialization.load_pem_public_key(public_pem)
    body = sig_text.split("-----BEGIN SIGNATURE-----\n", 1)[1].split("-----END SIGNATURE-----", 1)[0]
    signature = base64.b64decode(body)
    bare_verifier(key, prehashed=True)(signature, bytes.fromhex(digest.removeprefix("sha256:")))  # type: ignore[arg-type]


# ------------------------------------------------------------- a cluster in memory --


class _Objects:
    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((namespace, name))


class PreloadedState:
    """What WebhookCluster reads of a ClusterState, preloaded and never changing."""

    def __init__(self, policies: list[TrustPolicy],
                 plugins: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        self._policies = policies
        self.plugins = _Objects({(p["metadata"]["namespace"], p["metadata"]["name"]): p
                                 for p in plugins})
        self.generation = 1

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": namespace}

    def trust_policies(self) -> tuple[list[TrustPolicy], list[str]]:
        return self._policies, []

    def synced(self) -> bool:
        return True

    def stale_for(self) -> float:
        return 0.0


# ------------------------------------------------------------------- per algorithm --


def measure_algorithm(algorithm: str, form: str, timing: Timing) -> dict[str, Any]:
    """The five figures for one algorithm and format; see the module docstring."""
    private = keys.generate_private_key(algorithm)
    public = private.public_key()
    public_pem = _public_pem(public)
    document = sign_manifest(plugin_document(), key=private, form=form)
    policy_doc = policy_document(form=form, public_pem=public_pem)
    policy = compile_policy(policy_doc, material=NoMaterial())
    labels = {"kubernetes.io/metadata.name": NAMESPACE}
    signature = document["spec"]["signature"]

    if form == "dsse":
        envelope = signature["dsse"]
        message = _pae(envelope["payloadType"], base64.b64decode(envelope["payload"]))
        raw = base64.b64decode(envelope["signatures"][0]["sig"])
        verify = bare_verifier(public, prehashed=False)
        floor_parse: Callable[[], object] = lambda: floor_parse_dsse(public_pem.encode(), envelope)
    else:
        message = bytes.fromhex(DIGEST.removeprefix("sha256:"))
        body = signature["hkp"].split("-----BEGIN SIGNATURE-----\n", 1)[1]
        raw = base64.b64decode(body.split("-----END SIGNATURE-----", 1)[0])
        verify = bare_verifier(public, prehashed=True)
        floor_parse = lambda: floor_parse_hkp(public_pem.encode(), signature["hkp"], DIGEST)

    def engine_cold() -> None:
        compiled = compile_policy(policy_doc, material=NoMaterial())
        verdict = verify_plugin(parse_plugin(document, where="bench"), [compiled],
                                namespace_labels=labels)
        assert verdict.verified, verdict.message

    def engine_cold_compiled() -> None:
        verify_plugin(parse_plugin(document, where="bench"), [policy], namespace_labels=labels)

    cluster = WebhookCluster(PreloadedState([policy], [document]))  # type: ignore[arg-type]
    assert cluster.verdict(document).verified
    engine_cold()
    verify(raw, message)
    floor_parse()

    figures = medians_us({
        "floor": lambda: verify(raw, message),
        "floor_parse": floor_parse,
        "engine_cold": engine_cold,
        "engine_cold_compiled": engine_cold_compiled,
        "engine_warm": lambda: cluster.verdict(document),
    }, timing)
    figures["ratio_cold_to_floor_parse"] = round(figures["engine_cold"] / figures["floor_parse"], 3)
    figures["ratio_cold_compiled_to_floor_parse"] = round(
        figures["engine_cold_compiled"] / figures["floor_parse"], 3)
    return {"algorithm": algorithm, "format": form, **figures}


# ------------------------------------------------------------------------ chains --


@dataclass(frozen=True)
class Chain:
    root_pem: str
    leaf_key: ec.EllipticCurvePrivateKey
    certificates: tuple[x509.Certificate, ...]  # leaf first, root excluded
    issuers: tuple[x509.Certificate, ...]  # the issuer of each of ``certificates``


def make_chain(intermediates: int) -> Chain:
    """A root, ``intermediates`` CAs below it and a code-signing leaf, all ECDSA-P256."""
    now = datetime.datetime.now(datetime.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Bench Root", root_key.public_key(), "Bench Root", root_key,
                        ca=True, now=now)
    issuer, issuer_key, issued = root, root_key, [root]
    for depth in range(intermediates):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"Bench Intermediate {depth + 1}"
        issuer = _certificate(name, key.public_key(), issuer.subject.rfc4514_string()[3:],
                              issuer_key, ca=True, now=now)
        issuer_key = key
        issued.append(issuer)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("bench publisher", leaf_key.public_key(),
                        issuer.subject.rfc4514_string()[3:], issuer_key, ca=False, now=now)
    below_root = [leaf, *reversed(issued[1:])]
    return Chain(root.public_bytes(serialization.Encoding.PEM).decode(), leaf_key,
                 tuple(below_root), tuple(reversed(issued)))


def _certificate(subject: str, public: Any, issuer: str, signer: Any, *, ca: bool,
                 now: datetime.datetime) -> x509.Certificate:
    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    issuer_public = signer.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject)).issuer_name(name(issuer))
        .public_key(public).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),
                       critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def measure_chain(intermediates: int, timing: Timing) -> dict[str, Any]:
    """Cold verification of a dsse signature whose certificate chains to a policy root."""
    chain = make_chain(intermediates)
    document = sign_manifest(plugin_document(), key=chain.leaf_key,
                             certificates=chain.certificates, form="dsse")
    policy_doc = policy_document(form="dsse", root_pem=chain.root_pem,
                                 max_chain_length=intermediates + 2)
    policy = compile_policy(policy_doc, material=NoMaterial())
    labels = {"kubernetes.io/metadata.name": NAMESPACE}
    signature = document["spec"]["signature"]
    envelope = signature["dsse"]
    ecdsa = ec.ECDSA(hashes.SHA256())

    def floor_parse() -> None:
        certificates = x509.load_pem_x509_certificates(signature["certificateChain"].encode())
        root = x509.load_pem_x509_certificate(chain.root_pem.encode())
        issuers = [*certificates[1:], root]
        for certificate, issuer in zip(certificates, issuers, strict=True):
            issuer.public_key().verify(certificate.signature,  # type: ignore[union-attr, call-arg]
                                       certificate.tbs_certificate_bytes, ecdsa)
        payload = base64.b64decode(envelope["payload"])
        raw = base64.b64decode(envelope["signatures"][0]["sig"])
        certificates[0].public_key().verify(raw, _pae(envelope["payloadType"], payload), ecdsa)  # type: ignore[union-attr, call-arg]
        json.loads(payload)

    def engine_cold() -> None:
        compiled = compile_policy(policy_doc, material=NoMaterial())
        verdict = verify_plugin(parse_plugin(document, where="bench"), [compiled],
                                namespace_labels=labels)
        assert verdict.verified, verdict.message

    def engine_cold_compiled() -> None:
        verify_plugin(parse_plugin(document, where="bench"), [policy], namespace_labels=labels)

    engine_cold()
    floor_parse()
    figures = medians_us({"floor_parse": floor_parse, "engine_cold": engine_cold,
                          "engine_cold_compiled": engine_cold_compiled}, timing)
    figures["ratio_cold_to_floor_parse"] = round(figures["engine_cold"] / figures["floor_parse"], 3)
    return {"intermediates": intermediates, "certificates": intermediates + 2, **figures}


# ------------------------------------------------------------------ single flight --


def pod_review(plugin: Mapping[str, Any], *, containers: int = 3, uid: str = "bench") -> dict[str, Any]:
    """A plugin pod's AdmissionReview as the API server sends it: ``containers`` containers
    (one of them an init container when there are several), each within the sandbox."""
    metadata = plugin["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    image = f"{plugin['spec']['artifact']['image']}@{plugin['spec']['artifact']['digest']}"

    def container(index: int) -> dict[str, Any]:
        return {
            "name": f"part-{index}", "image": image, "imagePullPolicy": "IfNotPresent",
            "args": ["--listen=:8080", f"--shard={index}", "--log-format=json"],
            "env": [{"name": "PLUGIN_SHARD", "value": str(index)},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"containerPort": 8080 + index, "protocol": "TCP"}],
            "resources": {"limits": {"memory": "12Mi", "cpu": "20m"},
                          "requests": {"memory": "8Mi", "cpu": "10m"}},
            "securityContext": {
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "Localhost",
                                   "localhostProfile": f"pluginguard/{namespace}/{name}.json"}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                             {"name": "config", "mountPath": "/etc/plugin", "readOnly": True}],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
        }

    regular = [container(i) for i in range(containers)]
    spec: dict[str, Any] = {
        "containers": regular[1:] if containers > 1 else regular,
        "volumes": [{"name": "tmp", "emptyDir": {}},
                    {"name": "config", "configMap": {"name": f"{name}-config"}}],
        "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": True, "priority": 0,
    }
    if containers > 1:
        spec["initContainers"] = regular[:1]
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": f"{name}-", "namespace": namespace,
                     "labels": {"pluginguard.dev/plugin": name, "app": name}},
        "spec": spec,
    }
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "2c0a7c9e-0000-4000-8000-000000000001",
                         "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                                    "system:authenticated"]},
            "object": pod, "oldObject": None, "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def measure_single_flight(concurrency: int = 64) -> dict[str, Any]:
    """``concurrency`` simultaneous requests for a pod of one uncached Plugin: how many
    verifications they cause, and how long the slowest waited."""
    from aiohttp.test_utils import TestClient, TestServer

    private = keys.generate_private_key("ECDSA-P256")
    document = sign_manifest(plugin_document(), key=private, form="dsse")
    policy = compile_policy(policy_document(form="dsse", public_pem=_public_pem(private.public_key())),
                            material=NoMaterial())
    cluster = WebhookCluster(PreloadedState([policy], [document]))  # type: ignore[arg-type]
    body = json.dumps(pod_review(document)).encode()

    async def burst() -> tuple[list[float], list[bool]]:
        loop = asyncio.get_running_loop()
        async with TestClient(TestServer(make_app(cluster))) as client:
            async def one() -> tuple[float, bool]:
                started = loop.time()
                async with client.post("/validate/pods", data=body,
                                       headers={"Content-Type": "application/json"}) as response:
                    answer = await response.json()
                return loop.time() - started, bool(answer["response"]["allowed"])
            results = await asyncio.gather(*(one() for _ in range(concurrency)))
        return [r[0] for r in results], [r[1] for r in results]

    latencies, allowed = asyncio.run(burst())
    return {
        "concurrent_requests": concurrency,
        "verifications": cluster.cache.misses,
        "allowed": sum(allowed),
        "slowest_ms": round(max(latencies) * 1000, 2),
    }


def run(*, timing: Timing | None = None, algorithms: tuple[str, ...] = keys.ALGORITHMS,
        formats: tuple[str, ...] = FORMATS, chain_lengths: tuple[int, ...] = (0, 1, 2, 3),
        single_flight: int = 64) -> dict[str, Any]:
    """Every verification figure; ``timing`` sets how long each is measured."""
    timing = timing or Timing()
    return {
        "timing": {"repeat": timing.repeat, "min_seconds": timing.min_seconds,
                   "number": timing.number, "cpus": sorted(os.sched_getaffinity(0))},
        "algorithms": [measure_algorithm(a, f, timing) for a in algorithms for f in formats],
        "chains": [measure_chain(n, timing) for n in chain_lengths],
        "single_flight": measure_single_flight(single_flight),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
