"""In-memory copies of cluster objects, kept current by list and watch.

A Reflector lists one kind of object, then watches from the list's resourceVersion;
a watch that expires (410 Gone) or breaks is followed by a fresh list, so the copy
converges whatever the API server did meanwhile (restarts included). Readers never
wait on the API server: they read the dict as it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from kubernetes import client, watch

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Listener = Callable[[str, dict[str, Any]], None]

_WATCH_SECONDS = 240
# Short: after an API server restart the copy must be current again within seconds.
_MAX_BACKOFF = 1.0


def key_of(obj: dict[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace", ""), metadata.get("name", "")


class Reflector:
    """A live copy of the objects one list function returns.

    ``list_fn`` is a kubernetes-client list call (with its arguments bound) that accepts
    ``watch``, ``resource_version`` and ``timeout_seconds``. ``listener`` is called, on the
    reflector's thread, with ("ADDED"|"MODIFIED"|"DELETED", object) after the copy changed.

    The copy holds no ``metadata.managedFields``: nothing here reads them, and they are
    often the largest part of an object. ``view``, when given, makes what is kept of each
    object out of the rest (thousands of Plugins are held in every process).
    """

    def __init__(self, name: str, list_fn: Callable[..., Any], *,
                 listener: Listener | None = None,
                 view: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.name = name
        self._view = view
        self.objects: dict[Key, dict[str, Any]] = {}
        self.synced = threading.Event()  # listed at least once
        self.tried = threading.Event()  # a list answered at least once, or failed
        self.last_sync = 0.0
        self._broken_since: float | None = None
        self._list_fn = list_fn
        self._listener = listener
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> Reflector:
        self._broken_since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            # shutdown(), not close(): close() waits for the reading thread, which may sit
            # in a read for as long as the watch lasts.
            response.shutdown()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((namespace, name))

    def values(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def stale_for(self) -> float:
        """Seconds since the copy stopped following the API server (0 while it follows).

        Before the first list it counts from start: a copy never listed is stale.
        """
        if self._broken_since is None:
            return 0.0
        return time.monotonic() - self._broken_since

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                version = self._list()
                backoff = 0.2
                self._follow(version)
            except client.ApiException as error:
                if error.status == 410:
                    # Expired: our resourceVersion is older than the server keeps. Relist
                    # at once; the copy stays current meanwhile, so it is not broken.
                    log.info("watch %s: resourceVersion expired; listing again", self.name)
                    continue
                self._broken()
                self.tried.set()
                log.warning("watch %s: %s %s", self.name, error.status, error.reason)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            except Exception as error:  # noqa: BLE001 - a broken connection of any kind
                self._broken()
                self.tried.set()
                log.warning("watch %s: %s", self.name, error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    def _broken(self) -> None:
        if self._broken_since is None:
            self._broken_since = time.monotonic()

    def _list(self) -> str:
        response = self._list_fn(_preload_content=False, _request_timeout=30)
        listing = orjson.loads(response.data)
        fresh: dict[Key, dict[str, Any]] = {}
        for item in listing.get("items", []):
            fresh[key_of(item)] = self._kept(item)
        gone = [self.objects[k] for k in self.objects.keys() - fresh.keys()]
        changed = [obj for k, obj in fresh.items() if self.objects.get(k) != obj]
        self.objects = fresh
        self.last_sync = time.monotonic()
        self._broken_since = None
        self.synced.set()
        self.tried.set()
        for obj in gone:
            self._notify("DELETED", obj)
        for obj in changed:
            self._notify("MODIFIED", obj)
        return str(listing["metadata"]["resourceVersion"])

    def _follow(self, version: str) -> None:
        while not self._stop.is_set():
            for event in self._events(version):
                kind, obj = event["type"], event["object"]
                metadata = obj.get("metadata") or {}
                version = metadata.get("resourceVersion", version)
                if kind == "BOOKMARK":
                    continue
                obj = self._kept(obj)
                if kind == "DELETED":
                    self.objects.pop(key_of(obj), None)
                else:
                    self.objects[key_of(obj)] = obj
                self._notify(kind, obj)

    def _events(self, version: str) -> Iterator[dict[str, Any]]:
        """One watch request's events. An ERROR event (410 Gone among them) is raised as
        the ApiException it stands for."""
        response = self._list_fn(
            watch=True, resource_version=version, timeout_seconds=_WATCH_SECONDS,
            allow_watch_bookmarks=True, _preload_content=False,
            _request_timeout=_WATCH_SECONDS + 30,
        )
        self._response = response
        try:
            for line in watch.watch.iter_resp_lines(response):
                if not line.strip():
                    continue
                event = orjson.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise client.ApiException(status=status.get("code", 500),
                                              reason=status.get("message", "watch error"))
                yield event
        finally:
            self._response = None
            response.close()
            response.release_conn()

    def _kept(self, obj: dict[str, Any]) -> dict[str, Any]:
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            metadata.pop("managedFields", None)
        return self._view(obj) if self._view is not None else obj

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        if self._listener is None:
            return
        try:
            self._listener(kind, obj)
        except Exception:  # a listener's bug must not stop the copy from converging
            log.exception("watch %s: listener failed", self.name)
