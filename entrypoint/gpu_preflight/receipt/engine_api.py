"""The running engine's own numbers, over its HTTP API, with a timeout and a size cap on every call.

llama-server (tools/server/server.cpp): ``GET /health`` answers 503 while the model loads and 200
once it serves; ``GET /props`` carries ``default_generation_settings.n_ctx`` (the per-slot
context) and ``total_slots``; ``GET /slots`` one entry per slot; ``GET /metrics`` exists only with
``--metrics``. vLLM (vllm/entrypoints/openai/api_server.py): ``GET /health`` is 200 once the engine
is up; ``GET /v1/models`` gives ``max_model_len``; ``GET /metrics`` carries
``vllm:cache_config_info`` whose labels hold ``num_gpu_blocks`` and ``block_size``
(vllm/v1/metrics/loggers.py ``log_metrics_info("cache_config", ...)``), so the KV pool it really
allocated is ``num_gpu_blocks x block_size`` tokens.

Every failure here is a value (a warning string), never an exception: a receipt is taken beside a
serving engine and must not fail for one unreadable endpoint.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

MIB = 2**20
JSON_LIMIT = 4 * MIB  # /props holds the chat template; real ones are tens of KiB
METRICS_LIMIT = 8 * MIB
LINE_LIMIT = 1 * MIB  # one server-sent event
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Got:
    status: int | None  # None: no HTTP answer at all
    body: bytes
    problem: str | None  # why the answer is unusable (None: a 2xx within the cap)


def get(url: str, limit: int, timeout: float = REQUEST_TIMEOUT_S) -> Got:
    req = urllib.request.Request(url, headers={"Accept": "*/*"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read(limit + 1)
            if len(body) > limit:
                return Got(r.status, b"", f"GET {url}: the answer is over {limit // MIB} MiB")
            return Got(r.status, body, None)
    except urllib.error.HTTPError as exc:
        return Got(exc.code, b"", f"GET {url}: HTTP {exc.code}")
    except (OSError, ValueError) as exc:  # refused, reset, timeout, a bad URL
        return Got(None, b"", f"GET {url}: {getattr(exc, 'reason', None) or exc}")


def get_json(url: str, timeout: float = REQUEST_TIMEOUT_S) -> tuple[Any, str | None]:
    got = get(url, JSON_LIMIT, timeout)
    if got.problem:
        return None, got.problem
    try:
        return json.loads(got.body), None
    except (ValueError, RecursionError) as exc:
        return None, f"GET {url}: not JSON ({str(exc)[:80]})"


def wait_healthy(
    base: str,
    timeout_s: float,
    alive: Callable[[], bool],
    poll_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[float | None, str | None]:
    """Seconds until ``/health`` answered 200, or (None, why) after ``timeout_s`` or engine exit."""
    start = clock()
    last = "no answer yet"
    while True:
        got = get(f"{base}/health", 64 * 1024, timeout=min(REQUEST_TIMEOUT_S, max(1.0, timeout_s)))
        if got.status == 200:
            return clock() - start, None
        last = got.problem or f"HTTP {got.status}"
        if not alive():
            return None, f"the engine exited before it answered /health ({last})"
        if clock() - start >= timeout_s:
            return None, (
                f"the engine did not become healthy within {timeout_s:g} s (last /health: {last}); "
                "set PREFLIGHT_RECEIPT_TIMEOUT for a model that loads longer"
            )
        sleep(poll_s)


def parse_metrics(text: str) -> tuple[dict[str, list[tuple[dict[str, str], float]]], str | None]:
    """Prometheus text exposition -> {family: [(labels, value)]}, or ({}, why) for garbage."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for fam in text_string_to_metric_families(text):
            out.setdefault(fam.name, []).extend((dict(s.labels), s.value) for s in fam.samples)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        return {}, f"/metrics is not Prometheus text ({str(exc)[:80]})"
    return out, None


def read_metrics(base: str) -> tuple[dict[str, list[tuple[dict[str, str], float]]] | None, str | None]:
    got = get(f"{base}/metrics", METRICS_LIMIT)
    if got.problem:
        if got.status in (404, 501):
            return None, f"{got.problem} (llama-server serves /metrics only with --metrics)"
        return None, got.problem
    try:
        text = got.body.decode("utf-8")
    except UnicodeDecodeError:
        return None, "/metrics is not UTF-8 text"
    fams, why = parse_metrics(text)
    return (fams if why is None else None), why


def vllm_kv_tokens(fams: dict[str, list[tuple[dict[str, str], float]]]) -> tuple[int | None, str | None]:
    for name in ("vllm:cache_config_info", "vllm:cache_config"):
        for labels, _ in fams.get(name, []):
            blocks, size = labels.get("num_gpu_blocks"), labels.get("block_size")
            if blocks and size and blocks.isdigit() and size.isdigit():
                return int(blocks) * int(size), None
    return None, "/metrics has no vllm:cache_config_info with num_gpu_blocks and block_size"


def sse_events(resp: Any, deadline: float) -> Iterator[dict[str, Any]]:
    """The JSON events of a server-sent-event stream, each line capped, until [DONE] or deadline."""
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the stream ran past the receipt's time bound")
        line = resp.readline(LINE_LIMIT + 1)
        if not line:
            return
        if len(line) > LINE_LIMIT:
            raise ValueError("a server-sent event over 1 MiB")
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event
