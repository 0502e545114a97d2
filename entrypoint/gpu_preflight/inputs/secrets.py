"""Secret values, and the one function that masks them in anything a user, a log or a file sees.

A secret is the value of a secret-named variable (``overrides.is_secret``: HF_TOKEN, VLLM_API_KEY,
...) or of an engine argument whose table row is ``secret`` (``--api-key``, ``--hf-token``: those
are refused, but the refusal itself must not echo them). Its value is masked wherever it appears,
also when the user typed it into another setting (``--served-model-name hf_...``,
``HF_ENDPOINT=https://user:TOKEN@host``), as CI systems mask secrets in logs. Values shorter than
``MIN_SECRET`` characters are not masked: like GitLab CI's masked variables (8 characters at
least), a short value is too likely to be ordinary text ("auto", a port) to replace everywhere.

Only output is masked: the engine's argv and environment keep the real values (launch.exec_engine).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from gpu_preflight.inputs.flags import spelling_index
from gpu_preflight.inputs.overrides import is_secret

MASK = "***"
MIN_SECRET = 8  # shorter values are not masked (GitLab CI's rule for masked variables)
MIN_PREFIX = 8  # a cut-off secret ("hf_abcdefgh...") is masked from this many characters on


def argv_secrets(argv: Iterable[str]) -> tuple[str, ...]:
    """The values given to secret rows of the flag table (``--api-key X``, ``--hf-token=X``)."""
    index = spelling_index()
    tokens = list(argv)
    found: list[str] = []
    for i, tok in enumerate(tokens):
        name, eq, inline = tok.partition("=")
        rows = index.get(name) or []
        if not any(r.role == "secret" for r in rows):
            continue
        if eq:
            found.append(inline)
        elif i + 1 < len(tokens):
            found.append(tokens[i + 1])
    return tuple(found)


def secret_values(env: Mapping[str, str], argv: Iterable[str] = ()) -> tuple[str, ...]:
    """Every secret value of this run (env and argv secret rows), longest first, 8+ characters."""
    values = {v for n, v in env.items() if is_secret(n)} | set(argv_secrets(argv))
    kept = {v for v in values if len(v.strip()) >= MIN_SECRET}
    return tuple(sorted(kept, key=len, reverse=True))


def mask(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every occurrence of every secret replaced by ``***``.

    Also masked: the value stripped, its repr()/JSON-escaped form, and its leading part where a
    message cut it short (``'hf_abcdefgh...'``).
    """
    for value in secrets:
        forms = {value, value.strip(), repr(value)[1:-1], _json_inner(value)}
        for form in sorted(forms, key=len, reverse=True):
            if len(form) >= MIN_SECRET:
                text = text.replace(form, MASK)
        text = _mask_prefixes(text, value.strip())
    return text


def mask_doc(doc: Any, secrets: Sequence[str]) -> Any:
    """A JSON-like document with every string (keys included) masked; other values unchanged."""
    if not secrets:
        return doc
    if isinstance(doc, str):
        return mask(doc, secrets)
    if isinstance(doc, Mapping):
        return {mask(str(k), secrets): mask_doc(v, secrets) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [mask_doc(v, secrets) for v in doc]
    return doc


def _json_inner(value: str) -> str:
    import json

    return json.dumps(value)[1:-1]


def _mask_prefixes(text: str, value: str) -> str:
    if len(value) <= MIN_PREFIX:
        return text
    head = value[:MIN_PREFIX]
    out: list[str] = []
    i = 0
    while True:
        j = text.find(head, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        k = j + MIN_PREFIX
        while k < len(text) and k - j < len(value) and text[k] == value[k - j]:
            k += 1
        out.append(text[i:j] + MASK)
        i = k


class MaskingStream(io.TextIOBase):
    """A text stream that masks each write before passing it on (the CLI's stdout and stderr).

    Each write is masked whole; click and rich write a message or a rendered table at once.
    """

    def __init__(self, inner: TextIO, secrets: Sequence[str]) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = tuple(secrets)

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.inner.write(mask(s, self.secrets))
        return len(s)

    def flush(self) -> None:
        self.inner.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.inner, "errors", None)
