"""The figures that need a real control plane: the webhook over HTTPS beside a bare
aiohttp server, pod creation through kube-apiserver with and without the webhook, the
operator reconciling thousands of Plugins, and how the webhook's latency grows with what
it holds.

Set-up: etcd and kube-apiserver from ``tests/controlplane``; the webhook and the operator
started by ``LocalPluginGuard`` as the processes a cluster runs (``pluginguard webhook
serve`` and ``pluginguard operator run``), with the admin's credentials, and registered
with the API server. The webhook under test is therefore the real one: its ClusterState
is fed by watches of this API server, not preloaded.

Pinning: on a two-core machine the webhook (every thread, ``taskset -a -c 0``) and the
floor server (``taskset -c 0``) each get core 0, the load generator core 1
(``taskset -c 1``). etcd, kube-apiserver and the operator are not pinned.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kubernetes import client

from benchmarks.verification import plugin_document, pod_review
from pluginguard import keys
from pluginguard.signing import sign_manifest
from tests.controlplane.cluster import Component, ControlPlane
from tests.controlplane.pluginguard_local import LocalPluginGuard, ensure_namespace

HERE = Path(__file__).resolve().parent
GROUP, VERSION = "pluginguard.dev", "v1alpha1"
BENCH_LABEL = "pluginguard.dev/bench"
HOME = "bench"  # the namespace of the Plugin every measured pod belongs to
SERVER_CORE, CLIENT_CORE = "0", "1"


@dataclass
class Settings:
    """How long and how hard each part runs; ``quick()`` is for trying the harness."""

    rates: tuple[int, ...] = (250, 500, 1000)
    seconds: float = 10.0
    warmup_seconds: float = 2.0
    saturation_rounds: int = 3
    saturation_seconds: float = 6.0
    connections: int = 32
    containers: tuple[int, ...] = (1, 5, 20)
    scaling_rate: int = 500
    pod_seconds: float = 15.0
    pod_rounds: int = 2
    pod_workers: int = 16
    plugin_counts: tuple[int, ...] = (1000, 10000)
    create_workers: int = 32
    reconcile_timeout: float = 900.0

    @classmethod
    def quick(cls) -> Settings:
        return cls(rates=(250,), seconds=3.0, warmup_seconds=1.0, saturation_rounds=1,
                   saturation_seconds=3.0, containers=(1, 20),
                   pod_seconds=4.0, pod_rounds=1, plugin_counts=(100,),
                   reconcile_timeout=180.0)


@dataclass
class Bench:
    """A control plane with PluginGuard on it, and what the measurements need."""

    directory: Path
    settings: Settings
    log: Callable[[str], None] = print
    plane: ControlPlane = field(init=False)
    guard: LocalPluginGuard = field(init=False)
    key: keys.PrivateKey = field(init=False)
    floor: Component = field(init=False)
    floor_port: int = field(init=False)
    signed_spec: dict[str, Any] = field(init=False)

    # -- set-up

    def start(self) -> Bench:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log("starting etcd and kube-apiserver")
        self.plane = ControlPlane(self.directory / "controlplane").start()
        self.log("starting the webhook and the operator")
        self.guard = LocalPluginGuard(self.plane.kubeconfig, self.directory / "pluginguard",
                                      rbac="admin")
        self.guard.start()
        assert self.guard.webhook is not None and self.guard.webhook.pid is not None
        pin_all_threads(self.guard.webhook.pid, SERVER_CORE)
        (self.directory / "ca.pem").write_bytes(self.guard.ca_pem)

        self.key = keys.generate_private_key("ECDSA-P256")
        public = self.key.public_key().public_bytes(Encoding.PEM,
                                                    PublicFormat.SubjectPublicKeyInfo)
        custom = client.CustomObjectsApi(self.guard.api)
        custom.create_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "PluginTrustPolicy",
            "metadata": {"name": "bench"},
            "spec": {"namespaceSelector": {"matchLabels": {BENCH_LABEL: "true"}},
                     "trustedKeys": [{"name": "bench-publisher", "publicKey": public.decode()}]},
        })
        self.signed_spec = sign_manifest(plugin_document(), key=self.key)["spec"]
        self.plugin_namespace(HOME)
        self.start_floor()
        return self

    def start_floor(self) -> None:
        """The bare aiohttp server beside the webhook, answering mutating requests with
        the patch PluginGuard gives for the measured pod."""
        self.log("starting the floor server (bare aiohttp, uvloop, orjson)")
        self.floor_port = _free_port()
        self.floor = Component("floor-server", [
            "taskset", "-c", SERVER_CORE, sys.executable, str(HERE / "floor_server.py"),
            "--tls-cert", str(self.guard.directory / "webhook.crt"),
            "--tls-key", str(self.guard.directory / "webhook.key"),
            "--port", str(self.floor_port), "--mutation", self.mutation()],
            directory=self.directory, detached=False)
        self.floor.start()
        _wait_https(f"https://127.0.0.1:{self.floor_port}/readyz", self.directory / "ca.pem")

    def mutation(self) -> str:
        """PluginGuard's answer to the measured pod at /mutate/pods: its JSON Patch."""
        review = pod_review(self.plugin("bench-plugin", HOME), containers=3)
        request = urllib.request.Request(
            f"{self.guard.url}/mutate/pods", data=orjson.dumps(review),
            headers={"Content-Type": "application/json"})
        context = ssl.create_default_context(cafile=str(self.directory / "ca.pem"))
        deadline = time.monotonic() + 30
        while True:  # until the webhook's copy holds the published profile
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                answer = orjson.loads(response.read())["response"]
            if answer.get("patch") or time.monotonic() > deadline:
                return str(answer["patch"])
            time.sleep(0.2)

    def stop(self) -> None:
        for stop in (lambda: self.floor.stop(grace=5.0), self.guard.stop, self.plane.stop):
            try:
                stop()
            except Exception as error:  # noqa: BLE001 - tear down the rest regardless
                self.log(f"stopping: {error}")

    def plugin(self, name: str, namespace: str) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Plugin",
                "metadata": {"name": name, "namespace": namespace},
                "spec": copy.deepcopy(self.signed_spec)}

    def plugin_namespace(self, namespace: str, name: str = "bench-plugin") -> dict[str, Any]:
        """A namespace the policy covers, holding one Ready Plugin; the Plugin."""
        ensure_namespace(self.guard.api, namespace, labels={BENCH_LABEL: "true"})
        custom = client.CustomObjectsApi(self.guard.api)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "plugins",
                                               self.plugin(name, namespace))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "plugins", name)
            if _ready(obj):
                return obj
            time.sleep(0.2)
        raise RuntimeError(f"Plugin {namespace}/{name} not Ready after 60s")

    def review_file(self, containers: int = 3) -> Path:
        path = self.directory / f"review-{containers}.json"
        obj = self.plugin("bench-plugin", HOME)
        path.write_bytes(orjson.dumps(pod_review(obj, containers=containers)))
        return path

    # -- the webhook beside its floor

    def loadgen(self, url: str, body: Path, *, rate: float, seconds: float) -> dict[str, Any]:
        """One run of the load generator, with what it cost the server: CPU microseconds
        per answered request (all of the server's threads), a figure that holds even
        when the client, not the server, limits the throughput."""
        command = ["taskset", "-c", CLIENT_CORE, sys.executable, str(HERE / "loadgen.py"), url,
                   "--body", str(body), "--ca", str(self.directory / "ca.pem"),
                   "--rate", str(rate), "--seconds", str(seconds),
                   "--connections", str(self.settings.connections)]
        server = self.floor.pid if f":{self.floor_port}/" in url else (
            self.guard.webhook.pid if self.guard.webhook else None)
        before = _cpu_seconds(server)
        done = subprocess.run(command, capture_output=True, text=True, check=True,
                              timeout=seconds + 120)
        result = json.loads(done.stdout)
        answered = result["requests"] - result["failures"]
        used = _cpu_seconds(server) - before
        result["server_cpu_us_per_request"] = round(used / answered * 1e6, 1) if answered else None
        return result

    def side_by_side(self, urls: dict[str, str], body: Path) -> dict[str, dict[str, Any]]:
        """Each fixed rate, then saturation, on every server in turn, so that a burst of
        load from elsewhere on the machine falls on both alike. Saturation is measured
        ``saturation_rounds`` times per server, alternating; its median run is kept."""
        for url in urls.values():
            self.loadgen(url, body, rate=0, seconds=self.settings.warmup_seconds)
        series: dict[str, dict[str, Any]] = {name: {} for name in urls}
        for rate in self.settings.rates:
            for name, url in urls.items():
                result = self.loadgen(url, body, rate=rate, seconds=self.settings.seconds)
                series[name][str(rate)] = result
                self.log(f"  {name} at {rate}/s: {_brief(result)}")
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        for _ in range(self.settings.saturation_rounds):
            for name, url in urls.items():
                result = self.loadgen(url, body, rate=0,
                                      seconds=self.settings.saturation_seconds)
                rounds[name].append(result)
                self.log(f"  {name} saturated: {_brief(result)}")
        for name, runs in rounds.items():
            ordered = sorted(runs, key=lambda r: r["throughput"])
            series[name]["saturation"] = {**ordered[len(ordered) // 2],
                                          "rounds": [r["throughput"] for r in runs]}
        return series

    def webhook_vs_floor(self) -> dict[str, Any]:
        body = self.review_file()
        series = self.side_by_side({
            "floor": f"https://127.0.0.1:{self.floor_port}/validate/pods",
            "webhook": f"{self.guard.url}/validate/pods",
        }, body)
        floor_cost = series["floor"]["saturation"]["server_cpu_us_per_request"]
        webhook_cost = series["webhook"]["saturation"]["server_cpu_us_per_request"]
        return {"body_bytes": body.stat().st_size, **series,
                "saturation_ratio": round(series["webhook"]["saturation"]["throughput"]
                                          / series["floor"]["saturation"]["throughput"], 3),
                "cpu_ratio": round(floor_cost / webhook_cost, 3)
                if floor_cost and webhook_cost else None}

    def latency_at(self, body: Path, rate: int) -> dict[str, Any]:
        url = f"{self.guard.url}/validate/pods"
        self.loadgen(url, body, rate=rate, seconds=self.settings.warmup_seconds)
        return self.loadgen(url, body, rate=rate, seconds=self.settings.seconds)

    def by_containers(self) -> list[dict[str, Any]]:
        rows = []
        for containers in self.settings.containers:
            body = self.review_file(containers)
            result = self.latency_at(body, self.settings.scaling_rate)
            self.log(f"  {containers} containers ({body.stat().st_size} bytes): {_brief(result)}")
            rows.append({"containers": containers, "body_bytes": body.stat().st_size,
                         "rate": self.settings.scaling_rate, **result})
        return rows

    def by_plugins_cached(self, cached: int) -> dict[str, Any]:
        result = self.latency_at(self.review_file(), self.settings.scaling_rate)
        self.log(f"  {cached} Plugins cached: {_brief(result)}")
        return {"plugins_cached": cached, "rate": self.settings.scaling_rate, **result}

    def api_server_frozen(self) -> dict[str, Any]:
        """Latency while kube-apiserver is stopped with SIGSTOP: decisions are made from
        memory, so they go on at the same speed (past the staleness bound they turn
        into denials, still answered)."""
        apiserver = self.plane.apiserver.pid
        assert apiserver is not None
        body = self.review_file()
        url = f"{self.guard.url}/validate/pods"
        os.kill(apiserver, signal.SIGSTOP)
        try:
            result = self.loadgen(url, body, rate=self.settings.scaling_rate,
                                  seconds=self.settings.seconds)
        finally:
            os.kill(apiserver, signal.SIGCONT)
        self.log(f"  API server stopped: {_brief(result)}")
        return {"rate": self.settings.scaling_rate, **result}

    # -- pods through the API server

    def register(self, target: str) -> None:
        """Point both webhook configurations (validating and mutating, as the chart
        installs them) at ``target``: "pluginguard", "floor", or "none" to remove them."""
        if target == "none":
            self.guard.unregister_webhook()
            return
        port = self.guard.port
        self.guard.port = self.floor_port if target == "floor" else port
        try:
            self.guard.register_webhook()
        finally:
            self.guard.port = port

    def pods_through_apiserver(self) -> dict[str, Any]:
        """Pods created per second by ``pod_workers`` concurrent clients, each run in a
        fresh namespace (real creates, persisted in etcd; no kubelet runs them): with no
        webhook, with the floor server registered in PluginGuard's place (what the API
        server itself spends on calling two webhooks), and with PluginGuard."""
        rounds = []
        targets = ("none", "floor", "pluginguard")
        for index in range(self.settings.pod_rounds):
            for target in targets:
                namespace = f"pods-{target}-{index}"
                obj = self.plugin_namespace(namespace)
                self.register(target)
                time.sleep(1.0)  # the API server picks up webhook configurations by watch
                pod = pod_review(obj, containers=3)["request"]["object"]
                result = asyncio.run(self._create_pods(namespace, pod))
                result["webhook"] = target
                self.log(f"  webhook {target}: {result['pods_per_second']} pods/s "
                         f"({result['failures']} failures)")
                rounds.append(result)
        self.register("pluginguard")
        time.sleep(1.0)

        def mean(target: str) -> float:
            values = [r["pods_per_second"] for r in rounds if r["webhook"] == target]
            return round(sum(values) / len(values), 1)
        means = {target: mean(target) for target in targets}
        return {"rounds": rounds, "mean": means,
                "ratio": round(means["pluginguard"] / means["none"], 3),
                "ratio_to_floor_webhook": round(means["pluginguard"] / means["floor"], 3)}

    async def _create_pods(self, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.plane.server}/api/v1/namespaces/{namespace}/pods"
        body = orjson.dumps(pod)
        created, failures = 0, {}
        async with self._session() as session:
            end = time.perf_counter() + self.settings.pod_seconds

            async def worker() -> None:
                nonlocal created
                while time.perf_counter() < end:
                    async with session.post(url, data=body) as response:
                        answer = await response.read()
                        if response.status == 201:
                            created += 1
                        else:
                            reason = orjson.loads(answer).get("message", "")[:120]
                            key = f"{response.status} {reason}"
                            failures[key] = failures.get(key, 0) + 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(self.settings.pod_workers)))
            elapsed = time.perf_counter() - started
        return {"namespace": namespace, "created": created,
                "failures": sum(failures.values()), "failure_kinds": failures,
                "seconds": round(elapsed, 2), "pods_per_second": round(created / elapsed, 1)}

    # -- the operator

    def reconcile(self, count: int) -> dict[str, Any]:
        """Create ``count`` Plugins in a fresh namespace as fast as the API takes them;
        time from the first create to the last Plugin Ready."""
        namespace = f"ops-{count}"
        ensure_namespace(self.guard.api, namespace, labels={BENCH_LABEL: "true"})
        assert self.guard.webhook is not None
        processes = {"operator": self.guard.operators[0].pid, "webhook": self.guard.webhook.pid,
                     "kube-apiserver": self.plane.apiserver.pid, "etcd": self.plane.etcd.pid,
                     "bench client": os.getpid()}
        before = {name: _cpu_seconds(pid) for name, pid in processes.items()}
        result = asyncio.run(self._create_and_wait(namespace, count))
        result["cpu_seconds"] = {name: round(_cpu_seconds(pid) - before[name], 1)
                                 for name, pid in processes.items()}
        result["rss_mib"] = {
            "webhook": round(self.guard.webhook.rss_bytes() / 2**20, 1),
            "operator": round(self.guard.operators[0].rss_bytes() / 2**20, 1),
            **{name: round(rss / 2**20, 1) for name, rss in self.plane.rss().items()},
        }
        self.log(f"  {count} Plugins: created in {result['create_seconds']}s, all Ready after "
                 f"{result['ready_seconds']}s ({result['ready']}/{count}); RSS {result['rss_mib']}; "
                 f"CPU seconds {result['cpu_seconds']}")
        return result

    def api_floor(self, count: int) -> dict[str, Any]:
        """The operator's floor: the API writes the operator and kopf make for each Plugin,
        made by an async client that does nothing else. Run with the operator stopped.

        Per Plugin, in order: create it (through the webhook, as before), kopf's
        annotation patch, the profile ConfigMap and the NetworkPolicy (server-side apply,
        copied from a reconciled Plugin), two Events, the status patch. Timed from the
        first create to the last status patch.
        """
        custom = client.CustomObjectsApi(self.guard.api)
        reconciled = custom.get_namespaced_custom_object(GROUP, VERSION, HOME, "plugins",
                                                         "bench-plugin")
        core = client.CoreV1Api(self.guard.api)
        profile = core.read_namespaced_config_map("pluginguard-profile-bench-plugin", HOME)
        policy = client.NetworkingV1Api(self.guard.api).read_namespaced_network_policy(
            "pluginguard-bench-plugin", HOME)
        namespace = f"floor-{count}"
        ensure_namespace(self.guard.api, namespace, labels={BENCH_LABEL: "true"})
        copies = {
            "annotations": (reconciled["metadata"].get("annotations") or {}),
            "status": reconciled["status"],
            "profile": {"metadata": {"labels": profile.metadata.labels,
                                     "annotations": profile.metadata.annotations},
                        "data": profile.data},
            "policy": self.guard.api.sanitize_for_serialization(policy.spec),
        }
        processes = {"kube-apiserver": self.plane.apiserver.pid, "etcd": self.plane.etcd.pid,
                     "webhook": self.guard.webhook.pid if self.guard.webhook else None,
                     "bench client": os.getpid()}
        before = {name: _cpu_seconds(pid) for name, pid in processes.items()}
        result = asyncio.run(self._floor_writes(namespace, count, copies))
        result["cpu_seconds"] = {name: round(_cpu_seconds(pid) - before[name], 1)
                                 for name, pid in processes.items()}
        self.log(f"  API floor, {count} Plugins: {result['seconds']}s "
                 f"({result['failures']} failures); CPU seconds {result['cpu_seconds']}")
        return result

    async def _floor_writes(self, namespace: str, count: int,
                            copies: dict[str, Any]) -> dict[str, Any]:
        server = self.plane.server
        plugins = f"{server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/plugins"
        failures: dict[str, int] = {}
        apply = {"Content-Type": "application/apply-patch+yaml"}
        merge = {"Content-Type": "application/merge-patch+json"}
        owner_fields = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Plugin",
                        "controller": True, "blockOwnerDeletion": True}

        async def send(session: aiohttp.ClientSession, method: str, url: str,
                       body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
            async with session.request(method, url, data=orjson.dumps(body),
                                       headers=headers) as response:
                answer = await response.read()
                if response.status >= 300:
                    reason = f"{method} {response.status}"
                    failures[reason] = failures.get(reason, 0) + 1
                    return None
                return orjson.loads(answer)

        async def one(session: aiohttp.ClientSession, name: str) -> None:
            created = await send(session, "POST", plugins, self.plugin(name, namespace))
            if created is None:
                return
            uid = created["metadata"]["uid"]
            owner = {**owner_fields, "name": name, "uid": uid}
            await send(session, "PATCH", f"{plugins}/{name}",
                       {"metadata": {"annotations": copies["annotations"]}}, merge)
            config_map = f"pluginguard-profile-{name}"
            await send(session, "PATCH",
                       f"{server}/api/v1/namespaces/{namespace}/configmaps/{config_map}"
                       "?fieldManager=pluginguard-operator&force=true",
                       {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": config_map, "namespace": namespace,
                                     **copies["profile"]["metadata"],
                                     "ownerReferences": [owner]},
                        "data": copies["profile"]["data"]}, apply)
            await send(session, "PATCH",
                       f"{server}/apis/networking.k8s.io/v1/namespaces/{namespace}/"
                       f"networkpolicies/pluginguard-{name}"
                       "?fieldManager=pluginguard-operator&force=true",
                       {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": f"pluginguard-{name}", "namespace": namespace,
                                     "ownerReferences": [owner]},
                        "spec": copies["policy"]}, apply)
            for index, reason in enumerate(("Verified", "SeccompProfileGenerated")):
                await send(session, "POST", f"{server}/api/v1/namespaces/{namespace}/events", {
                    "metadata": {"name": f"{name}.floor{index}", "namespace": namespace},
                    "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Plugin",
                                       "name": name, "namespace": namespace, "uid": uid},
                    "type": "Normal", "reason": reason, "message": f"{reason} (floor)",
                    "source": {"component": "pluginguard-operator"}, "count": 1})
            await send(session, "PATCH", f"{plugins}/{name}/status",
                       {"status": copies["status"]}, merge)

        names = iter(range(count))
        async with self._session() as session:
            async def pipeline() -> None:
                for index in names:
                    await one(session, f"p-{index:05d}")

            started = time.perf_counter()
            await asyncio.gather(*(pipeline() for _ in range(self.settings.create_workers)))
            elapsed = time.perf_counter() - started
        return {"plugins": count, "seconds": round(elapsed, 1),
                "plugins_per_second": round(count / elapsed, 1),
                "failures": sum(failures.values()), "failure_kinds": failures}

    def stop_operator(self) -> None:
        for operator in self.guard.operators:
            operator.stop(grace=10.0)

    async def _create_and_wait(self, namespace: str, count: int) -> dict[str, Any]:
        base = f"{self.plane.server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/plugins"
        ready: set[str] = set()
        all_ready = asyncio.Event()
        failures: dict[str, int] = {}
        async with self._session() as session:
            async with session.get(base) as response:
                version = (await response.json())["metadata"]["resourceVersion"]
            watcher = asyncio.create_task(self._watch_ready(session, base, version, ready,
                                                            count, all_ready))
            names = iter(range(count))
            started = time.perf_counter()

            async def creator() -> None:
                for index in names:
                    body = orjson.dumps(self.plugin(f"p-{index:05d}", namespace))
                    async with session.post(base, data=body) as response:
                        answer = await response.read()
                        if response.status != 201:
                            reason = f"{response.status} {orjson.loads(answer).get('message', '')[:120]}"
                            failures[reason] = failures.get(reason, 0) + 1

            await asyncio.gather(*(creator() for _ in range(self.settings.create_workers)))
            created = time.perf_counter() - started
            try:
                await asyncio.wait_for(all_ready.wait(), self.settings.reconcile_timeout)
            except TimeoutError:
                pass
            finished = time.perf_counter() - started
            watcher.cancel()
        complete = len(ready) >= count
        return {"plugins": count, "create_failures": sum(failures.values()),
                "create_failure_kinds": failures, "create_seconds": round(created, 1),
                "ready": len(ready), "complete": complete,
                "ready_seconds": round(finished, 1) if complete else None,
                "timed_out_after": None if complete else self.settings.reconcile_timeout,
                "plugins_per_second": round(len(ready) / finished, 1)}

    async def _watch_ready(self, session: aiohttp.ClientSession, base: str, version: str,
                           ready: set[str], count: int, all_ready: asyncio.Event) -> None:
        while True:
            params = {"watch": "1", "resourceVersion": version, "timeoutSeconds": "3600",
                      "allowWatchBookmarks": "true"}
            async with session.get(base, params=params,
                                   timeout=aiohttp.ClientTimeout(total=None)) as response:
                async for line in response.content:
                    event = orjson.loads(line)
                    obj = event["object"]
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] in ("ADDED", "MODIFIED") and _ready(obj):
                        ready.add(obj["metadata"]["name"])
                        if len(ready) >= count:
                            all_ready.set()
                            return

    def _session(self) -> aiohttp.ClientSession:
        context = self.plane.pki.admin_tls()
        connector = aiohttp.TCPConnector(ssl=context, limit=64)
        return aiohttp.ClientSession(connector=connector,
                                     headers={"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=60))


def _ready(obj: dict[str, Any]) -> bool:
    generation = obj.get("metadata", {}).get("generation")
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True" and \
                condition.get("observedGeneration") == generation
    return False


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU time a process has used so far, from /proc."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin_all_threads(pid: int, cpus: str) -> None:
    """Pin every thread of ``pid`` (and so the threads it starts later) to ``cpus``."""
    subprocess.run(["taskset", "-a", "-c", "-p", cpus, str(pid)], check=True,
                   capture_output=True)


def _free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_https(url: str, ca: Path, timeout: float = 30.0) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not answering after {timeout:.0f}s")


def _brief(result: dict[str, Any]) -> str:
    return (f"{result['throughput']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
            f"p99.9 {result['p999_ms']} ms, {result['failures']} failures, "
            f"client CPU {result['client_cpu']}, "
            f"server {result.get('server_cpu_us_per_request')} CPU µs/request")
