"""In-memory copies of cluster objects, kept current by list and watch.

A Reflector lists one kind of object, then watches from the list's resourceVersion;
a watch that expires (410 Gone) or breaks is followed by a fresh list, so the copy
converges whatever the API server did meanwhile (restarts included). Readers never
wait on the API server: they read the dict as it is.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client, watch

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Listener = Callable[[str, dict[str, Any]], None]

_WATCH_SECONDS = 240
_MAX_BACKOFF = 5.0


def key_of(obj: dict[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace", ""), metadata.get("name", "")


class Reflector:
    """A live copy of the objects one list function returns.

    ``list_fn`` is a kubernetes-client list call (with its arguments bound) that accepts
    ``watch``, ``resource_version`` and ``timeout_seconds``. ``listener`` is called, on the
    reflector's thread, with ("ADDED"|"MODIFIED"|"DELETED", object) after the copy changed.
    """

    def __init__(self, name: str, list_fn: Callable[..., Any], *,
                 listener: Listener | None = None) -> None:
        self.name = name
        self.objects: dict[Key, dict[str, Any]] = {}
        self.synced = threading.Event()
        self.last_sync = 0.0
        self._list_fn = list_fn
        self._listener = listener
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Reflector:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((namespace, name))

    def values(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                version = self._list()
                backoff = 0.2
                self._follow(version)
            except client.ApiException as error:
                if error.status != 410:
                    log.warning("watch %s: %s %s", self.name, error.status, error.reason)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
            except Exception as error:  # noqa: BLE001 - a broken connection of any kind
                log.warning("watch %s: %s", self.name, error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    def _list(self) -> str:
        response = self._list_fn(_preload_content=False, _request_timeout=30)
        listing = json.loads(response.data)
        fresh: dict[Key, dict[str, Any]] = {}
        for item in listing.get("items", []):
            fresh[key_of(item)] = item
        gone = [self.objects[k] for k in self.objects.keys() - fresh.keys()]
        changed = [obj for k, obj in fresh.items() if self.objects.get(k) != obj]
        self.objects = fresh
        self.last_sync = time.monotonic()
        self.synced.set()
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
                if kind == "DELETED":
                    self.objects.pop(key_of(obj), None)
                else:
                    self.objects[key_of(obj)] = obj
                self._notify(kind, obj)

    def _events(self, version: str) -> Iterator[dict[str, Any]]:
        self._watch = watch.Watch()
        yield from self._watch.stream(
            self._list_fn, resource_version=version, timeout_seconds=_WATCH_SECONDS,
            allow_watch_bookmarks=True, deserialize=False, _request_timeout=_WATCH_SECONDS + 30,
        )

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        if self._listener is None:
            return
        try:
            self._listener(kind, obj)
        except Exception:  # a listener's bug must not stop the copy from converging
            log.exception("watch %s: listener failed", self.name)
