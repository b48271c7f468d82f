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
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # the CRD's pattern, ^sha256:[0-9a-f]{64}$


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


class ManifestLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    PyYAML keeps the last value of a repeated key without a word; kubectl and the API
    server refuse such a manifest, and a reviewer reading the first value would be
    misled about what is applied.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<" merges: its keys may be overridden, as YAML intends
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: construct_mapping refuses it below
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r}", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class ManifestDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing a string of several lines (a PEM text, an hkp
    signature) as a literal block, as a person would, rather than a quoted scalar."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


ManifestDumper.add_representer(str, _represent_text)


def dump_manifest(document: Mapping[str, Any]) -> str:
    """``document`` as YAML in the order of its keys, multi-line strings as blocks."""
    return yaml.dump(document, Dumper=ManifestDumper, sort_keys=False)


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``path`` ("-" reads standard input).

    Raises InputError for an unreadable file, YAML that does not parse or repeats a key
    in a mapping (with line and column) or a document that is not a mapping.
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
        documents = [doc for doc in yaml.load_all(text, Loader=ManifestLoader) if doc is not None]
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


# What a value must be, in the words of YAML rather than Python's type names.
_KIND_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
               bool: "a boolean (true or false)", float: "a number"}


def field(document: Mapping[str, Any], path: str, kind: type, *, where: str,
          prefix: str = "") -> Any:
    """The value at dotted ``path``; InputError if absent or not of ``kind``.

    ``prefix`` is the place of ``document`` itself (``spec``), for the messages.
    """
    value: Any = document
    parts = path.split(".")
    for depth, part in enumerate(parts):
        # type() first: parsed JSON and YAML are dicts, and isinstance against the
        # Mapping ABC costs more than the lookup itself.
        if type(value) is not dict and not isinstance(value, Mapping):
            raise InputError(where, f"{_place(prefix, parts[:depth])} must be a mapping")
        if part not in value:
            raise InputError(where, f"{_place(prefix, parts[:depth + 1])} is required")
        value = value[part]
    return _checked(value, kind, prefix, path, where)


def optional(document: Mapping[str, Any], path: str, kind: type, default: Any, *, where: str,
             prefix: str = "") -> Any:
    """Like field(), but ``default`` when the path (or any parent) is absent or null."""
    value: Any = document
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if type(value) is not dict and not isinstance(value, Mapping):
            raise InputError(where, f"{_place(prefix, parts[:depth])} must be a mapping")
        value = value.get(part)
        if value is None:
            return default
    return _checked(value, kind, prefix, path, where)


def _place(prefix: str, parts: list[str]) -> str:
    return ".".join([prefix, *parts] if prefix else parts) or "the document"


def _checked(value: Any, kind: type, prefix: str, path: str, where: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        place = f"{prefix}.{path}" if prefix else path
        raise InputError(where, f"{place} must be {_KIND_NAMES.get(kind, kind.__name__)}")
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
    if not DIGEST.fullmatch(digest):
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
