"""Reading Kubernetes manifests (YAML files of one or more documents) into Plugin values.

Every problem is an InputError naming the file, the document and the field, so that a
pipeline log points straight at the line to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pluginguard.errors import InputError

GROUP = "pluginguard.dev"
API_VERSION = f"{GROUP}/v1alpha1"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Plugin:
    """A Plugin object as the core needs it: where it lives, what it is, how it is signed."""

    name: str
    namespace: str
    digest: str
    image: str | None
    sandbox: Mapping[str, Any]
    signature: Mapping[str, Any]
    labels: Mapping[str, str]
    generation: int | None = None

    @property
    def digest_hex(self) -> str:
        return self.digest.removeprefix("sha256:")


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``path`` ("-" reads standard input).

    Raises InputError for an unreadable file, YAML that does not parse (with line and
    column) or a document that is not a mapping.
    """
    name = str(path)
    try:
        text = Path("/dev/stdin").read_text() if name == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(name, f"cannot read: {error}") from error
    return parse_documents(text, where=name)


def parse_documents(text: str, *, where: str) -> list[dict[str, Any]]:
    """The non-empty documents of a YAML text; see load_documents."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise InputError(where, f"invalid YAML: {place}{problem}") from error
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            raise InputError(
                where, f"document {index + 1} is a {type(document).__name__}, not a mapping"
            )
    return documents


def field(document: Mapping[str, Any], path: str, kind: type, *, where: str) -> Any:
    """The value at dotted ``path``; InputError if absent or not of ``kind``."""
    value: Any = document
    for part in path.split("."):
        # type() first: parsed JSON and YAML are dicts, and isinstance against the
        # Mapping ABC costs more than the lookup itself.
        if (type(value) is not dict and not isinstance(value, Mapping)) or part not in value:
            raise InputError(where, f"{path} is required")
        value = value[part]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(where, f"{path} must be a {kind.__name__}")
    return value


def optional(document: Mapping[str, Any], path: str, kind: type, default: Any, *, where: str) -> Any:
    """Like field(), but ``default`` when the path (or any parent) is absent or null."""
    value: Any = document
    for part in path.split("."):
        if type(value) is not dict and not isinstance(value, Mapping):
            return default
        value = value.get(part)
        if value is None:
            return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(where, f"{path} must be a {kind.__name__}")
    return value


def parse_plugin(document: Mapping[str, Any], *, where: str) -> Plugin:
    """A Plugin from its manifest (or from the object the API server sends).

    Raises InputError when the document is not a Plugin or a required field is off.
    The sandbox and signature are checked later, by the steps that use them.
    """
    if document.get("kind") != "Plugin" or document.get("apiVersion") != API_VERSION:
        found = f"{document.get('apiVersion')}/{document.get('kind')}"
        raise InputError(where, f"expected a {API_VERSION} Plugin, found {found}")
    name = field(document, "metadata.name", str, where=where)
    namespace = optional(document, "metadata.namespace", str, "default", where=where)
    digest = field(document, "spec.artifact.digest", str, where=where)
    if not _DIGEST.fullmatch(digest):
        raise InputError(where, "spec.artifact.digest must be sha256: and 64 lowercase hex digits")
    labels = optional(document, "metadata.labels", dict, {}, where=where)
    return Plugin(
        name=name,
        namespace=namespace,
        digest=digest,
        image=optional(document, "spec.artifact.image", str, None, where=where),
        sandbox=optional(document, "spec.sandbox", dict, {}, where=where),
        signature=optional(document, "spec.signature", dict, {}, where=where),
        labels={str(k): str(v) for k, v in labels.items()},
        generation=optional(document, "metadata.generation", int, None, where=where),
    )
