"""Kubernetes Events on PluginGuard's objects, aggregated as kubelet does: an identical
event (same object, type, reason and message) bumps the count of the existing Event
instead of creating another."""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

log = logging.getLogger(__name__)

COMPONENT = "pluginguard"


class EventRecorder:
    """Writes Events from a background thread, so that no caller waits on the API server.

    The queue is bounded: under a flood, events are dropped (and counted in the log)
    rather than memory growing without limit.
    """

    def __init__(self, api: client.ApiClient, *, component: str = COMPONENT,
                 capacity: int = 10_000) -> None:
        self._core = client.CoreV1Api(api)
        self._component = component
        self._queue: queue.Queue[tuple[dict[str, Any], str, str, str]] = queue.Queue(capacity)
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def record(self, obj: dict[str, Any], *, type: str, reason: str, message: str) -> None:
        """Queue an Event on ``obj``; returns at once."""
        try:
            self._queue.put_nowait((obj, type, reason, message[:1024]))
        except queue.Full:
            self._dropped += 1
            if self._dropped % 1000 == 1:
                log.warning("event queue full; %d events dropped so far", self._dropped)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued Event was written; False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            obj, type, reason, message = self._queue.get()
            try:
                self._write(obj, type, reason, message)
            except Exception as error:  # noqa: BLE001 - an Event is never worth a crash
                log.warning("cannot write event %s on %s: %s", reason, _describe(obj), error)
            finally:
                self._queue.task_done()

    def write_once(self, obj: dict[str, Any], *, key: str, type: str, reason: str,
                   message: str) -> None:
        """Write an Event now, exactly once per ``key``: a repeat with the same key (a
        reconcile replayed after a crash) finds it there and leaves it alone.

        Raises the API error when the Event cannot be written, so the caller retries.
        """
        name = _event_name(obj, f"{key}|{type}|{reason}|{message}")
        body = self._body(obj, name, type, reason, message[:1024])
        try:
            self._core.create_namespaced_event(body["metadata"]["namespace"], body)
        except client.ApiException as error:
            if error.status != 409:
                raise

    def _write(self, obj: dict[str, Any], type: str, reason: str, message: str) -> None:
        name = _event_name(obj, f"{type}|{reason}|{message}")
        namespace = obj["metadata"].get("namespace") or "default"
        now = _now()
        try:
            existing = self._core.read_namespaced_event(name, namespace)
        except client.ApiException as error:
            if error.status != 404:
                raise
            existing = None
        if existing is not None:
            self._core.patch_namespaced_event(name, namespace, {
                "count": (existing.count or 1) + 1, "lastTimestamp": now})
            return
        self._core.create_namespaced_event(namespace, self._body(obj, name, type, reason, message))

    def _body(self, obj: dict[str, Any], name: str, type: str, reason: str,
              message: str) -> dict[str, Any]:
        metadata = obj["metadata"]
        namespace = metadata.get("namespace") or "default"
        now = _now()
        return {
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                "name": metadata["name"], "namespace": metadata.get("namespace"),
                "uid": metadata.get("uid"), "resourceVersion": metadata.get("resourceVersion"),
            },
            "type": type, "reason": reason, "message": message,
            "source": {"component": self._component},
            "reportingComponent": self._component, "reportingInstance": self._component,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }


def _event_name(obj: dict[str, Any], identity: str) -> str:
    metadata = obj["metadata"]
    tag = hashlib.sha256(f"{metadata.get('uid')}|{identity}".encode()).hexdigest()[:10]
    return f"{metadata['name']}.{tag}"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _describe(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{obj.get('kind')} {metadata.get('namespace', '')}/{metadata.get('name')}"
