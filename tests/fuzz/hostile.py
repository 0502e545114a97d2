"""Generators of hostile JSON values, with raw tokens JSON itself cannot carry (NaN, 1e400)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

RAW_TOKENS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "9" * 5000,
    "1" + "0" * 50,
    "1e-400",
]


class Raw:
    """A JSON token written as is (json.dumps cannot write NaN or 1e400 the way a file can)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:20]!r})"


def dumps(doc: Any) -> str:
    """JSON text of ``doc`` with every ``Raw`` spliced in verbatim."""
    raws: list[str] = []

    def enc(o: Any) -> Any:
        if isinstance(o, Raw):
            raws.append(o.text)
            return f"__RAW_{len(raws) - 1}__"
        if isinstance(o, dict):
            return {k: enc(v) for k, v in o.items()}
        if isinstance(o, list):
            return [enc(v) for v in o]
        return o

    text = json.dumps(enc(doc))
    for i, r in enumerate(raws):
        text = text.replace(f'"__RAW_{i}__"', r)
    return text


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**8, 10**18]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 32.0, -0.0, 1e300]),
    st.text(max_size=16),
    st.sampled_from(["abc", "", "32", "1e400"]),
    st.sampled_from(RAW_TOKENS).map(Raw),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=2),
)


def deep(n: int) -> str:
    return "[" * n + "]" * n


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) inside a JSON document, the root excluded."""
    out: list[tuple[Any, ...]] = []
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    )
    for k, v in items:
        out.append((*prefix, k))
        out.extend(paths(v, (*prefix, k)))
    return out


@st.composite
def mutated(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with one to three places replaced by a hostile value, or deleted."""
    import copy

    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        where = paths(doc)
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return doc
