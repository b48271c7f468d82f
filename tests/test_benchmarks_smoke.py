"""The verification benchmark runs end to end and reports what the results promise.

Tiny repetition counts: this pins the shape of the output, never a timing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import report, verification
from pluginguard import keys

FIGURES = {"floor", "floor_parse", "engine_cold", "engine_cold_compiled", "engine_warm",
           "ratio_cold_to_floor_parse", "ratio_cold_compiled_to_floor_parse"}


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    figures = verification.run(timing=verification.Timing(repeat=1, number=2),
                               chain_lengths=(0, 1), single_flight=4)
    return json.loads(json.dumps(figures))  # what results.json holds


def test_every_algorithm_and_format_has_every_figure(results: dict[str, Any]) -> None:
    rows = results["algorithms"]
    assert {(r["algorithm"], r["format"]) for r in rows} == {
        (a, f) for a in keys.ALGORITHMS for f in verification.FORMATS}
    for row in rows:
        assert FIGURES <= row.keys()
        assert all(row[name] > 0 for name in FIGURES)


def test_chains_and_single_flight_are_reported(results: dict[str, Any]) -> None:
    assert [c["intermediates"] for c in results["chains"]] == [0, 1]
    assert {"floor_parse", "engine_cold", "engine_cold_compiled",
            "ratio_cold_to_floor_parse"} <= results["chains"][0].keys()
    flight = results["single_flight"]
    assert flight["concurrent_requests"] == 4
    assert flight["allowed"] == 4
    assert flight["verifications"] >= 1


def test_the_markdown_names_the_machine_and_the_verification_target(
        results: dict[str, Any]) -> None:
    machine = {"cpus": 2, "cpu_model": "test", "platform": "test", "python": "3",
               "packages": {"cryptography": "1"}, "commit": "abc", "dirty": False,
               "started": "now", "load_average_before": [0.0, 0.0, 0.0]}
    text = report.markdown({"machine": machine, "verification": results})
    assert "## Verification" in text and "| ECDSA-P384 | hkp |" in text
    assert "engine cold / (floor + parsing) <= 1.3" in text
