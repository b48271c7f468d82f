"""Reading manifests: YAML documents, field paths in messages, and the YAML we write."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pluginguard.errors import InputError
from pluginguard.manifest import (
    dump_manifest,
    field,
    optional,
    parse_documents,
    parse_plugin,
)
from tests.plugin_factory import plugin


@pytest.mark.parametrize("text, line, key", [
    ("a: 1\na: 2\n", 2, "'a'"),
    ("spec:\n  artifact:\n    digest: x\n    digest: y\n", 4, "'digest'"),
    ("- {x: 1, x: 2}\n", 1, "'x'"),
    ("1: a\ntrue: b\n", 2, "True"),  # equal as Python keys: one would silently go
])
def test_a_key_given_twice_is_refused_with_its_line(text: str, line: int, key: str) -> None:
    with pytest.raises(InputError) as raised:
        parse_documents(text, where="p.yaml")
    assert str(raised.value).startswith(f"p.yaml: invalid YAML: line {line}, column ")
    assert str(raised.value).endswith(f"duplicate key {key}")


def test_merge_keys_may_be_overridden() -> None:
    text = "base: &b {x: 1, y: 2}\nmerged:\n  <<: *b\n  x: 3\n"
    assert parse_documents(text, where="p.yaml")[0]["merged"] == {"x": 3, "y": 2}


def test_an_unhashable_key_is_still_invalid_yaml() -> None:
    with pytest.raises(InputError, match="invalid YAML: .*unhashable key"):
        parse_documents("? [a]\n: 1\n", where="p.yaml")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["spec"].update(artifact="x"), "spec.artifact must be a mapping"),
    (lambda d: d.update(spec=["x"]), "spec must be a mapping"),
    (lambda d: d["spec"]["artifact"].pop("digest"), "spec.artifact.digest is required"),
    (lambda d: d["spec"]["artifact"].update(digest=5), "spec.artifact.digest must be a string"),
    (lambda d: d.update(metadata="x"), "metadata must be a mapping"),
    (lambda d: d["metadata"].update(labels=["a"]), "metadata.labels must be a mapping"),
])
def test_a_field_of_the_wrong_shape_is_named(mutate: Any, message: str) -> None:
    document = plugin()
    mutate(document)
    with pytest.raises(InputError) as raised:
        parse_plugin(document, where="p.yaml")
    assert str(raised.value) == f"p.yaml: {message}"


def test_field_paths_carry_the_prefix_of_the_part_read() -> None:
    spec = {"crl": {"sources": "x"}, "flag": "yes"}
    with pytest.raises(InputError, match=r"^w: spec\.crl\.sources must be a list$"):
        optional(spec, "crl.sources", list, [], where="w", prefix="spec")
    with pytest.raises(InputError, match=r"^w: spec\.flag must be a boolean"):
        field(spec, "flag", bool, where="w", prefix="spec")
    with pytest.raises(InputError, match=r"^w: spec\.flag must be a mapping$"):
        optional(spec, "flag.inner", str, None, where="w", prefix="spec")


def test_multi_line_strings_are_written_as_literal_blocks() -> None:
    document = {"pem": "-----BEGIN X-----\nAAAA\n-----END X-----\n", "tail": "a\nb",
                "line": "one line", "spaced": "trailing \nspace\n"}
    text = dump_manifest(document)
    assert "pem: |\n  -----BEGIN X-----\n  AAAA\n  -----END X-----\n" in text
    assert "tail: |-\n  a\n  b\n" in text
    assert "line: one line\n" in text
    assert yaml.safe_load(text) == document
