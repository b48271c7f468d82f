"""Hypothesis strategies for hostile input: arbitrary JSON, and real documents with a
few parts changed, which reach deeper into the code than JSON drawn from nothing."""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterator
from typing import Any

from hypothesis import strategies as st

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)


def places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into ``value``'s dicts and lists, ``value`` itself excluded."""
    if path:
        yield path
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        items = ()
    for key, inner in items:
        yield from places(inner, (*path, key))


@st.composite
def mutated(
    draw: st.DrawFn,
    document: Any,
    *,
    replacements: st.SearchStrategy[Any] = JSON,
    keep: Collection[tuple[Any, ...]] = (),
) -> Any:
    """A deep copy of ``document`` with one to three parts changed: a character of a
    string, a value replaced by one of ``replacements``, or a key removed. Paths that
    start with one of ``keep`` are left alone."""
    changed = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        candidates = [
            path
            for path in places(changed)
            if not any(path[: len(prefix)] == prefix for prefix in keep)
        ]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = changed
        for key in path[:-1]:
            parent = parent[key]
        current = parent[path[-1]]
        action = draw(st.sampled_from(["character", "replace", "remove"]))
        if action == "character" and isinstance(current, str) and current:
            at = draw(st.integers(0, len(current) - 1))
            character = draw(st.characters(codec="ascii"))
            parent[path[-1]] = current[:at] + character + current[at + 1 :]
        elif action == "remove" and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(replacements)
    return changed
