"""Two operator replicas: kopf peering keeps one active; when it dies, the other takes
over, and no Plugin is reconciled twice for one change."""

from __future__ import annotations

import time

import pytest

from tests.e2e.plugins import create_plugin, eventually, events_for, signed, wait_ready

pytestmark = pytest.mark.e2e


def verified_events(core, namespace: str, name: str) -> list:
    return [e for e in events_for(core, namespace, name) if e.reason == "Verified"]


def test_one_replica_is_active_and_the_other_takes_over(pluginguard, custom, core, namespace,
                                                         trust_policy) -> None:
    first = pluginguard.operators[0]
    # A replica with a higher priority than any random one: it must become the active one.
    second = pluginguard.start_operator(name="operator-2", priority=pluginguard.outranking_priority())
    try:
        eventually(lambda: "Pausing operations in favour of" in first.log_tail(400),
                   timeout=30, what="the first replica pauses in favour of the second")
        # Work the first replica had in hand when it paused may still finish; let it.
        time.sleep(2.0)

        create_plugin(custom, signed("ha-one", namespace))
        wait_ready(custom, namespace, "ha-one")
        eventually(lambda: verified_events(core, namespace, "ha-one"), what="Verified event")
        eventually(lambda: "ha-one" in second.log_tail(2000), what="the active replica handled it")
        assert "ha-one" not in first.log_tail(2000)

        resumed_before = first.log_tail(2000).count("Resuming operations")
        second.kill()  # a crash: no goodbye to the peering object
        eventually(lambda: first.log_tail(2000).count("Resuming operations") > resumed_before, timeout=45,
                   what="the first replica resumes once the second's lifetime expires")
        create_plugin(custom, signed("ha-two", namespace))
        wait_ready(custom, namespace, "ha-two")
        eventually(lambda: verified_events(core, namespace, "ha-two"), what="Verified event")
    finally:
        second.stop(grace=2.0)
    for name in ("ha-one", "ha-two"):
        events = verified_events(core, namespace, name)
        assert len(events) == 1 and events[0].count == 1, [(e.message, e.count) for e in events]
