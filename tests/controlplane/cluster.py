"""A real single-node Kubernetes control plane (etcd and kube-apiserver) on loopback.

End-to-end tests and ``make demo`` run against it instead of a mock, so that admission,
RBAC and storage behave as in a cluster. Only etcd and kube-apiserver run: there is no
kubelet (pods stay Pending) and no controller manager (nothing garbage-collects, and a
deleted namespace stays Terminating), which keeps start-up to seconds.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime
import http.client
import ipaddress
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pluginguard.errors import PluginGuardError

log = logging.getLogger(__name__)

BUILD_SCRIPT = Path(__file__).with_name("build.sh")
#: A folder of prebuilt binaries to use instead of running ``build.sh``.
BIN_DIR_ENV = "PLUGINGUARD_CONTROLPLANE_BIN"
ETCD = "etcd"
APISERVER = "kube-apiserver"
KUBECTL = "kubectl"
ADMIN_USER = "pluginguard-admin"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KUBECONFIG_NAME = "kubeconfig"

_LOOPBACK = "127.0.0.1"
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1


class ControlPlaneError(PluginGuardError):
    """The control plane could not be built, started or stopped.

    The message names the step that failed and, when a process is to blame, ends with
    the last lines of its log.
    """


class _PortTaken(ControlPlaneError):
    """A component found its port taken between our choice of it and its bind."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


# --- binaries ---------------------------------------------------------------------


def ensure_binaries() -> Path:
    """Return the folder holding ``etcd``, ``kube-apiserver`` and ``kubectl``.

    ``$PLUGINGUARD_CONTROLPLANE_BIN`` may name a folder of prebuilt binaries; otherwise
    ``build.sh`` builds them from the pinned Go modules (minutes, once per version) and
    afterwards only prints where they are.

    Raises ControlPlaneError if the build fails or a binary is missing.
    """
    override = os.environ.get(BIN_DIR_ENV)
    bin_dir = Path(override) if override else _run_build_script()
    missing = [
        n for n in (ETCD, APISERVER, KUBECTL) if not os.access(bin_dir / n, os.X_OK)
    ]
    if missing:
        raise ControlPlaneError(
            f"control-plane binaries: {bin_dir} lacks {', '.join(missing)}"
        )
    return bin_dir


def _run_build_script() -> Path:
    # The build's progress goes to our stderr as it happens (a cold build takes many
    # minutes); its tail is kept for the error message.
    try:
        build = subprocess.Popen(
            ["bash", str(BUILD_SCRIPT)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    except OSError as error:
        raise ControlPlaneError(
            f"control-plane build: cannot run {BUILD_SCRIPT}: {error}"
        ) from error
    assert build.stdout is not None and build.stderr is not None
    tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
    for line in build.stderr:
        sys.stderr.write(line)
        tail.append(line)
    printed = build.stdout.read().split()
    code = build.wait()
    if code != 0 or not printed:
        raise ControlPlaneError(
            f"control-plane build: {BUILD_SCRIPT} exited with code {code}; "
            f"its last lines:\n{''.join(tail)}"
        )
    return Path(printed[-1])


# --- credentials ------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Where the control plane's certificates and keys live (all PEM)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "service-account.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.directory / "service-account.pub"

    def admin_tls(self) -> ssl.SSLContext:
        """A TLS context trusting the CA and presenting the admin client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        return context


def write_pki(directory: Path) -> Pki:
    """Create a new CA and, signed by it, the API server's and the admin's certificates.

    Also writes the key pair that signs service-account tokens. Every key is ECDSA
    P-256, which kube-apiserver accepts everywhere and which is generated instantly.
    """
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pluginguard-test-ca")
    ca_cert = _certificate(
        ca_name, ca_key.public_key(), issuer=ca_name, signer=ca_key, is_ca=True
    )
    _write(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))

    serving_key = ec.generate_private_key(ec.SECP256R1())
    service_ip = next(ipaddress.IPv4Network(SERVICE_CLUSTER_IP_RANGE).hosts())
    names: list[x509.GeneralName] = [
        x509.DNSName(host)
        for host in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    names += [
        x509.IPAddress(ipaddress.ip_address(_LOOPBACK)),
        x509.IPAddress(service_ip),
    ]
    serving = _certificate(
        _name(APISERVER),
        serving_key.public_key(),
        issuer=ca_name,
        signer=ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        names=names,
    )
    _write(pki.serving_cert, serving.public_bytes(serialization.Encoding.PEM))
    _write(pki.serving_key, _private_pem(serving_key), secret=True)

    # system:masters is bound to cluster-admin by RBAC's bootstrap policy.
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _certificate(
        _name(ADMIN_USER, organization="system:masters"),
        admin_key.public_key(),
        issuer=ca_name,
        signer=ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    _write(pki.admin_cert, admin.public_bytes(serialization.Encoding.PEM))
    _write(pki.admin_key, _private_pem(admin_key), secret=True)

    account_key = ec.generate_private_key(ec.SECP256R1())
    _write(pki.service_account_key, _private_pem(account_key), secret=True)
    _write(
        pki.service_account_public_key,
        account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return pki


def _name(common_name: str, *, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(
            0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)
        )
    return x509.Name(attributes)


def _certificate(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    *,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    is_ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    names: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    # Back-dated by an hour so that a clock a little behind still accepts it; a year is
    # long enough for a demo cluster left running.
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, content: bytes, *, secret: bool = False) -> None:
    # Written beside and renamed, so that a reader never sees half a file.
    staged = path.with_name(path.name + ".tmp")
    staged.write_bytes(content)
    if secret:
        staged.chmod(0o600)
    staged.replace(path)


def write_kubeconfig(path: Path, *, server: str, pki: Pki) -> None:
    """Write a kubeconfig for the admin user with every certificate embedded."""

    def embedded(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "pluginguard",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": embedded(pki.ca_cert),
                },
            }
        ],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {
                    "client-certificate-data": embedded(pki.admin_cert),
                    "client-key-data": embedded(pki.admin_key),
                },
            }
        ],
        "contexts": [
            {
                "name": "pluginguard",
                "context": {"cluster": "pluginguard", "user": ADMIN_USER},
            }
        ],
        "current-context": "pluginguard",
        "preferences": {},
    }
    _write(path, yaml.safe_dump(config, sort_keys=False).encode(), secret=True)


# --- processes --------------------------------------------------------------------


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once in the parent: a forked child must not go through the dynamic
    # loader, whose lock another thread may have held at fork time.
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _die_with(parent: int) -> Callable[[], None]:
    """A pre-exec hook: the kernel kills the child whenever ``parent`` dies.

    This covers what ``atexit`` cannot: a test run killed with SIGKILL, or with SIGTERM,
    whose default action skips Python's exit handlers.
    """

    def hook() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        # The parent may have died between fork and prctl; nobody would reap us then.
        if os.getppid() != parent:
            os._exit(1)

    return hook


class Component:
    """One control-plane binary, run as the leader of its own process group.

    Its output is appended to ``<name>.log`` and its pid written to ``<name>.pid`` in
    the control plane's directory. An *attached* component dies with the Python process
    that started it; a *detached* one outlives it and is stopped with ``down()``.
    """

    def __init__(
        self, name: str, argv: Sequence[str], *, directory: Path, detached: bool
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = directory / f"{name}.log"
        self.pid_path = directory / f"{name}.pid"
        self.detached = detached
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> None:
        """Start the binary; it must not be running already."""
        if self.running():
            raise ControlPlaneError(f"{self.name}: already running as pid {self.pid}")
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        with self.log_path.open("ab") as log_file:
            log_file.write(f"==== {self.name} starting at {stamp} ====\n".encode())
            log_file.flush()
            self._log_offset = log_file.tell()
            try:
                self._process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=None if self.detached else _die_with(os.getpid()),
                )
            except OSError as error:
                raise ControlPlaneError(
                    f"{self.name}: cannot start {self.argv[0]}: {error}"
                ) from error
        self.pid_path.write_text(f"{self._process.pid}\n")
        if not self.detached:
            _attached[self] = None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group; SIGKILL it if it outlasts ``grace`` seconds."""
        process = self._process
        if process is not None and process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s ignored SIGTERM for %.0fs; killing it", self.name, grace
                )
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        self._forget()

    def kill(self) -> None:
        """SIGKILL the process group at once, as a crash would; its data stays on disk.

        etcd survives this by design; for a fault test it is also much quicker than
        ``stop()``, which waits up to 7s for etcd to end the API server's watches.
        """
        process = self._process
        if process is not None and process.poll() is None:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        self._forget()

    def _forget(self) -> None:
        self.pid_path.unlink(missing_ok=True)
        _attached.pop(self, None)

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def exit_code(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines this run of the component wrote (not earlier runs')."""
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(
                    max(self._log_offset, log_file.seek(0, os.SEEK_END) - 65536)
                )
                text = log_file.read().decode(errors="replace")
        except OSError as error:
            return f"(cannot read {self.log_path}: {error})"
        return "\n".join(text.splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident memory of the running process, from ``/proc`` (Linux only)."""
        if self.pid is None:
            return 0
        return _rss_bytes(self.pid)


# Attached components still running, in start order; stopped at interpreter exit.
_attached: dict[Component, None] = {}


@atexit.register
def _stop_attached() -> None:
    for component in reversed(list(_attached)):
        component.stop(grace=5.0)


def _signal_group(leader: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signum)


def _rss_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is chosen, so the ports differ. Another
    # process can still take one before our components bind it: start() retries.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _fetch(url: str, tls: ssl.SSLContext | None = None) -> tuple[int, str]:
    """GET ``url``, bypassing any proxy from the environment; status 0 if no answer."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=tls))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=3.0) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as error:
        return 0, str(error)


# --- the control plane ------------------------------------------------------------


class ControlPlane:
    """etcd and kube-apiserver, started in ``directory`` on free loopback ports.

    Use it as a context manager, or call ``start()`` and ``stop()``. The directory
    receives the PKI (``pki/``), etcd's data (``etcd-data/``), the admin ``kubeconfig``,
    one log and one pid file per component. Once started, ``server``, ``kubeconfig``,
    ``ca_pem`` and ``bin_dir`` (which holds ``kubectl``) describe it.

    For fault tests, ``restart_etcd()`` and ``restart_apiserver()`` bounce a component
    on the same port with the same data; ``etcd.stop()`` (or ``etcd.kill()``, a crash)
    then ``etcd.start()`` and ``wait_ready()`` leave a window in between.

    With ``persistent=True`` the processes are detached: they outlive this Python
    process, and ``down(directory)`` stops them. Otherwise they never outlive it, even
    when it is killed.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        bin_dir: Path | None = None,
        persistent: bool = False,
        start_timeout: float = 120.0,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.kubeconfig = self.directory / KUBECONFIG_NAME
        self.persistent = persistent
        self.start_timeout = start_timeout
        #: Seconds from launching etcd to the API server being ready, build excluded.
        self.startup_seconds: float | None = None
        self._bin_dir = bin_dir
        self._pki = Pki(self.directory / "pki")
        self._server: str | None = None
        self._etcd_url: str | None = None
        self._etcd: Component | None = None
        self._apiserver: Component | None = None

    # -- what tests read

    @property
    def server(self) -> str:
        """The API server's URL, ``https://127.0.0.1:<port>``."""
        if self._server is None:
            raise ControlPlaneError(f"control plane in {self.directory}: not started")
        return self._server

    @property
    def bin_dir(self) -> Path:
        """The folder holding the etcd, kube-apiserver and kubectl binaries in use."""
        if self._bin_dir is None:
            raise ControlPlaneError(f"control plane in {self.directory}: not started")
        return self._bin_dir

    @property
    def ca_pem(self) -> bytes:
        """The PEM certificate of the CA that signed the API server's certificate."""
        return self._pki.ca_cert.read_bytes()

    @property
    def pki(self) -> Pki:
        return self._pki

    @property
    def etcd_url(self) -> str:
        """etcd's client URL, ``http://127.0.0.1:<port>`` (plain HTTP, on loopback)."""
        if self._etcd_url is None:
            raise ControlPlaneError(f"control plane in {self.directory}: not started")
        return self._etcd_url

    @property
    def etcd_data(self) -> Path:
        """etcd's data directory: ~60 MB, mostly its preallocated write-ahead log."""
        return self.directory / "etcd-data"

    @property
    def etcd(self) -> Component:
        if self._etcd is None:
            raise ControlPlaneError(f"control plane in {self.directory}: not started")
        return self._etcd

    @property
    def apiserver(self) -> Component:
        if self._apiserver is None:
            raise ControlPlaneError(f"control plane in {self.directory}: not started")
        return self._apiserver

    def rss(self) -> dict[str, int]:
        """Resident memory in bytes of each component, by binary name."""
        return {
            component.name: component.rss_bytes() for component in self._components()
        }

    # -- lifecycle

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start etcd, then kube-apiserver, and return once the API serves requests.

        Steps: 1. find or build the binaries; 2. write fresh credentials and empty
        etcd's data; 3. start both components on free ports, choosing new ones if a port
        was taken meanwhile; 4. write the kubeconfig.

        Raises ControlPlaneError naming the step that failed, with the tail of the
        failing component's log; whatever had started is stopped again.
        """
        if any(component.running() for component in self._components()):
            raise ControlPlaneError(
                f"control plane in {self.directory}: already running"
            )
        try:
            if self._bin_dir is None:
                self._bin_dir = ensure_binaries()

            began = time.monotonic()
            write_pki(self._pki.directory)
            shutil.rmtree(self.etcd_data, ignore_errors=True)

            for attempt in range(1, _PORT_ATTEMPTS + 1):
                try:
                    self._launch(*_free_ports(3))
                    break
                except _PortTaken as error:
                    self._stop_components(grace=2.0)
                    if attempt == _PORT_ATTEMPTS:
                        raise
                    log.info("%s: port taken meanwhile; choosing others", error.name)

            write_kubeconfig(self.kubeconfig, server=self.server, pki=self._pki)
            self.startup_seconds = time.monotonic() - began
        except BaseException:
            self.stop()
            raise
        log.info(
            "control plane ready at %s in %.1fs (kubeconfig %s)",
            self.server,
            self.startup_seconds,
            self.kubeconfig,
        )
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop kube-apiserver, then etcd; idempotent. Data and logs stay on disk."""
        self._stop_components(grace)

    def restart_etcd(self, grace: float = 10.0) -> None:
        """Stop etcd and start it again with the same port and data; return once the API
        server serves again. Raises ControlPlaneError if either does not recover."""
        self.etcd.stop(grace)
        self.etcd.start()
        self.wait_ready()

    def restart_apiserver(self, grace: float = 10.0) -> None:
        """Stop kube-apiserver and start it again on the same port; return once it is
        ready. Raises ControlPlaneError if it does not come back."""
        self.apiserver.stop(grace)
        self.apiserver.start()
        self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until etcd is healthy and the API server ready.

        Raises ControlPlaneError when a component exits or ``timeout`` (by default the
        start timeout) passes first.
        """
        timeout = self.start_timeout if timeout is None else timeout
        _wait_for(self.etcd, self._etcd_health, what="etcd health", timeout=timeout)
        _wait_for(
            self.apiserver, self._apiserver_ready, what="API server", timeout=timeout
        )

    # -- internals

    def _launch(self, etcd_client: int, etcd_peer: int, apiserver_port: int) -> None:
        detached = self.persistent
        self._etcd_url = f"http://{_LOOPBACK}:{etcd_client}"
        self._server = f"https://{_LOOPBACK}:{apiserver_port}"
        self._etcd = Component(
            ETCD,
            self._etcd_argv(etcd_client, etcd_peer),
            directory=self.directory,
            detached=detached,
        )
        self._apiserver = Component(
            APISERVER,
            self._apiserver_argv(apiserver_port),
            directory=self.directory,
            detached=detached,
        )
        self._etcd.start()
        _wait_for(
            self._etcd,
            self._etcd_health,
            what="etcd health",
            timeout=self.start_timeout,
        )
        self._apiserver.start()
        _wait_for(
            self._apiserver,
            self._apiserver_ready,
            what="API server",
            timeout=self.start_timeout,
        )

    def _etcd_argv(self, client: int, peer: int) -> list[str]:
        client_url = f"http://{_LOOPBACK}:{client}"
        peer_url = f"http://{_LOOPBACK}:{peer}"
        return [
            str(self.bin_dir / ETCD),
            "--name=pluginguard",
            f"--data-dir={self.etcd_data}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=pluginguard={peer_url}",
            # Throwaway data: losing the last writes on a crash is fine, fsync's latency
            # on a busy CI disk is not.
            "--unsafe-no-fsync",
        ]

    def _apiserver_argv(self, port: int) -> list[str]:
        pki = self._pki
        return [
            str(self.bin_dir / APISERVER),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={_LOOPBACK}",
            f"--advertise-address={_LOOPBACK}",
            f"--secure-port={port}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_public_key}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            # RBAC as in a real cluster: the operator runs under its own ServiceAccount.
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # That admission plugin rejects pods whose ServiceAccount does not exist,
            # and without a controller manager no one creates "default" in namespaces.
            "--disable-admission-plugins=ServiceAccount",
            # Plugins' sandboxes are judged by PluginGuard, not refused up front.
            "--allow-privileged=true",
            # The lease reconciler would publish 127.0.0.1 as the endpoint of the
            # "kubernetes" Service, which Endpoints validation refuses (loopback).
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]

    def _etcd_health(self) -> str | None:
        status, body = _fetch(f"{self.etcd_url}/health")
        if status == 200 and '"health":"true"' in body.replace(" ", ""):
            return None
        return f"/health answered {status}: {body.strip()[:200]}"

    def _apiserver_ready(self) -> str | None:
        tls = self._pki.admin_tls()
        status, body = _fetch(f"{self.server}/readyz?verbose", tls)
        if status != 200:
            failing = [line for line in body.splitlines() if line.startswith("[-]")]
            return (
                f"/readyz answered {status}: {'; '.join(failing) or body.strip()[:200]}"
            )
        # The "default" namespace comes from a controller of its own, shortly after.
        status, body = _fetch(f"{self.server}/api/v1/namespaces/default", tls)
        if status != 200:
            return f"namespace default not there yet ({status})"
        return None

    def _components(self) -> list[Component]:
        return [c for c in (self._etcd, self._apiserver) if c is not None]

    def _stop_components(self, grace: float) -> None:
        for component in reversed(self._components()):
            component.stop(grace)


def _wait_for(
    component: Component,
    probe: Callable[[], str | None],
    *,
    what: str,
    timeout: float,
) -> None:
    """Poll ``probe`` (None when ready, else what it saw) until ready or ``timeout``.

    Raises ControlPlaneError, with the component's log tail, if the component exits or
    the time runs out; _PortTaken if it exited because its port was taken.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not component.running():
            tail = component.log_tail()
            message = (
                f"{component.name} exited with code {component.exit_code} while "
                f"waiting for {what}; last lines of {component.log_path}:\n{tail}"
            )
            if "address already in use" in tail:
                raise _PortTaken(component.name, message)
            raise ControlPlaneError(message)
        seen = probe()
        if seen is None:
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(
                f"{what}: not ready after {timeout:.0f}s ({seen}); last lines of "
                f"{component.log_path}:\n{component.log_tail()}"
            )
        time.sleep(0.2)


# --- detached control planes (make demo) ------------------------------------------


def up(directory: str | os.PathLike[str], *, timeout: float = 120.0) -> Path:
    """Start a detached control plane in ``directory``, or reuse the one running there.

    Returns the path of its admin kubeconfig. A half-running or unresponsive one is
    stopped and replaced, with fresh credentials and empty data.

    Raises ControlPlaneError if the new one cannot be built or started.
    """
    directory = Path(directory).resolve()
    kubeconfig = directory / KUBECONFIG_NAME
    if _serving(directory, timeout=timeout):
        log.info("control plane in %s already running", directory)
        return kubeconfig
    if down(directory):
        log.warning("replaced the unresponsive control plane in %s", directory)
    directory.mkdir(parents=True, exist_ok=True)
    ControlPlane(directory, persistent=True, start_timeout=timeout).start()
    return kubeconfig


def down(directory: str | os.PathLike[str], *, grace: float = 10.0) -> bool:
    """Stop the control plane running in ``directory``, if any; True if one was.

    Its data, credentials and logs stay, so the directory can be inspected afterwards.
    Only processes whose command line names ``directory`` are signalled, so a stale pid
    file cannot kill an unrelated process that reused the pid.
    """
    directory = Path(directory).resolve()
    stopped = False
    for name in (APISERVER, ETCD):
        pid = _live_pid(directory, name)
        if pid is not None:
            stop_detached(name, pid, grace)
            stopped = True
        (directory / f"{name}.pid").unlink(missing_ok=True)
    return stopped


def _serving(directory: Path, *, timeout: float) -> bool:
    if any(_live_pid(directory, name) is None for name in (ETCD, APISERVER)):
        return False
    try:
        config = yaml.safe_load((directory / KUBECONFIG_NAME).read_text())
        server = config["clusters"][0]["cluster"]["server"]
        tls = Pki(directory / "pki").admin_tls()
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, ssl.SSLError):
        # Still starting (no kubeconfig yet), or left in a state we cannot read.
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _fetch(f"{server}/readyz", tls)[0] == 200:
            return True
        time.sleep(0.5)
    return False


def _live_pid(directory: Path, name: str) -> int | None:
    try:
        pid = int((directory / f"{name}.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (OSError, ValueError):
        return None
    if Path(argv[0]).name != name or not any(str(directory) in arg for arg in argv):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def stop_detached(name: str, pid: int, grace: float) -> None:
    """Stop process group ``pid``: SIGTERM, and SIGKILL after ``grace`` seconds.

    Raises ControlPlaneError if it survives even that."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _alive(pid):
        return
    log.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it", name, pid, grace)
    _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while _alive(pid):
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"{name} (pid {pid}) survived SIGKILL")
        time.sleep(0.1)
