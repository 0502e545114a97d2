"""A short, fixed decode workload through the OpenAI-compatible API both engines serve.

One stream, then the planned number of streams at once (capped), each asking for a bounded number
of tokens with ``ignore_eos`` (both llama-server and vLLM accept it) so every run decodes the same
count. Decode speed is llama-server's own ``timings.predicted_per_second`` where the stream carries
it (tools/server/server.cpp adds ``timings`` to the last chunk), else the client's clock between
the first and the last token, which is what a user of the API sees.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.error
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gpu_preflight.receipt.engine_api import sse_events
from gpu_preflight.receipt.types import StreamResult

# A prompt of ordinary prose (~60 tokens): long enough for a prefill figure, short enough to
# fit any context the planner ships.
PROMPT = (
    "The receipt measures how fast this server decodes. Write a plain account of how a river "
    "carves a valley over many thousands of years: the water, the stones it carries, the floods "
    "that widen the banks, and the slow patience of erosion. Continue for as long as you can."
)
MAX_PARALLEL_STREAMS = 16  # vLLM plans hundreds of sequences; 16 at once shows batching already
MONITOR_EVERY_S = 0.5
# No byte from the engine for this long ends a stream: the slowest decode worth serving sends a
# token every few seconds, and a prefill of the short prompt takes less than this anywhere.
STALL_S = 30.0


@dataclass(frozen=True)
class _One:
    prompt_tokens: int
    completion_tokens: int
    t_start: float
    t_first: float | None
    t_last: float | None
    engine_decode_tok_s: float | None
    engine_prefill_tok_s: float | None
    error: str | None = None


class _Streams:
    """The open streams, so that a monitor can cut them when the engine stops listening.

    Why: llama-server, on SIGTERM, closes its listener and then joins its HTTP threads, and a
    thread still streaming to a client that keeps reading can wait for that client
    (tools/server/server-http.cpp ``server_http_context::join``, seen here: 20 s and more). The
    receipt must never hold up ``docker stop``, so once the port refuses connections every stream
    of ours is shut down at once and the engine's threads see the client gone.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conns: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()
        self.gone = threading.Event()
        self.done = threading.Event()

    def add(self, c: http.client.HTTPConnection) -> None:
        with self.lock:
            self.conns.append(c)
        if self.gone.is_set():
            self.cut()

    def cut(self) -> None:
        with self.lock:
            for c in self.conns:
                sock = c.sock
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def watch(self) -> None:
        while not self.done.wait(MONITOR_EVERY_S):
            try:
                with socket.create_connection((self.host, self.port), timeout=2):
                    pass
            except ConnectionRefusedError:
                self.gone.set()
                self.cut()
                return
            except OSError:
                continue  # a slow accept is not a stop


def _stream(streams: _Streams, model: str, max_tokens: int, timeout_s: float) -> _One:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.monotonic()
    first = last = None
    chunks = 0
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    conn = http.client.HTTPConnection(streams.host, streams.port, timeout=STALL_S)
    try:
        conn.connect()
        streams.add(conn)
        conn.request(
            "POST",
            "/v1/completions",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        r = conn.getresponse()
        if r.status != 200:
            raise urllib.error.HTTPError(
                "/v1/completions", r.status, r.reason, r.headers, None
            )
        with contextlib.closing(r):
            for ev in sse_events(r, t0 + timeout_s):
                choices = ev.get("choices") or []
                text = choices[0].get("text") if choices and isinstance(choices[0], dict) else None
                if text:
                    now = time.monotonic()
                    first = first if first is not None else now
                    last = now
                    chunks += 1
                if isinstance(ev.get("usage"), dict):
                    usage = ev["usage"]
                if isinstance(ev.get("timings"), dict):
                    timings = ev["timings"]
    except (OSError, ValueError, TimeoutError, http.client.HTTPException) as exc:
        why = f"HTTP {exc.code}" if isinstance(exc, urllib.error.HTTPError) else str(exc)[:120]
        if streams.gone.is_set():
            why = "the engine stopped listening (it is shutting down); the stream was cut"
        return _One(0, chunks, t0, first, last, None, None, f"POST /v1/completions: {why}")
    finally:
        conn.close()
    completion = _int(usage.get("completion_tokens")) or _int(timings.get("predicted_n")) or chunks
    prompt = _int(usage.get("prompt_tokens")) or _int(timings.get("prompt_n")) or 0
    return _One(
        prompt,
        completion,
        t0,
        first,
        last,
        _pos(timings.get("predicted_per_second")),
        _pos(timings.get("prompt_per_second")),
    )


def _int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else 0


def _pos(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None


def _summarise(runs: list[_One]) -> tuple[StreamResult | None, str | None]:
    errors = [r.error for r in runs if r.error]
    if errors:
        return None, errors[0]
    timed = [r for r in runs if r.t_first is not None and r.t_last is not None]
    if not timed or sum(r.completion_tokens for r in runs) == 0:
        return None, "the engine streamed no tokens"
    engine = [r.engine_decode_tok_s for r in runs]
    if all(e is not None for e in engine):
        per = sum(e for e in engine if e is not None) / len(engine)
        prefills = [r.engine_prefill_tok_s for r in runs if r.engine_prefill_tok_s]
        prefill = sum(prefills) / len(prefills) if prefills else None
        source = "engine timings"
    else:
        rates = []
        for r in timed:
            span = (r.t_last or 0) - (r.t_first or 0)
            if r.completion_tokens > 1 and span > 0:
                rates.append((r.completion_tokens - 1) / span)
        per = sum(rates) / len(rates) if rates else 0.0
        pf = [
            r.prompt_tokens / ((r.t_first or r.t_start) - r.t_start)
            for r in timed
            if r.prompt_tokens and (r.t_first or r.t_start) > r.t_start
        ]
        prefill = sum(pf) / len(pf) if pf else None
        source = "client clock"
    start = min(r.t_first for r in timed if r.t_first is not None)
    end = max(r.t_last for r in timed if r.t_last is not None)
    total = sum(r.completion_tokens for r in runs)
    aggregate = (total - len(timed)) / (end - start) if end > start else None
    wall = max(r.t_last or r.t_start for r in runs) - min(r.t_start for r in runs)
    return (
        StreamResult(
            streams=len(runs),
            completion_tokens=total,
            decode_tok_s=round(per, 2) if per else None,
            aggregate_tok_s=round(aggregate, 2) if aggregate else None,
            prefill_tok_s=round(prefill, 2) if prefill else None,
            prompt_tokens=sum(r.prompt_tokens for r in runs),
            source=source,
            wall_s=round(max(0.0, wall), 3),
        ),
        None,
    )


def run_streams(
    base: str, model: str, streams: int, max_tokens: int, timeout_s: float
) -> tuple[StreamResult | None, str | None]:
    """``streams`` completions at once; (result, None) or (None, why)."""
    n = max(1, min(streams, MAX_PARALLEL_STREAMS))
    runs: list[_One | None] = [None] * n
    u = urlsplit(base)
    if u.scheme != "http" or not u.hostname:
        return None, f"{base}: the workload speaks plain http to the engine on this machine"
    open_streams = _Streams(u.hostname, u.port or 80)
    monitor = threading.Thread(target=open_streams.watch, daemon=True)
    monitor.start()

    def one(i: int) -> None:
        runs[i] = _stream(open_streams, model, max_tokens, timeout_s)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 5)
    open_streams.done.set()
    done = [r for r in runs if r is not None]
    if len(done) < n:
        return None, f"{n - len(done)} of {n} streams did not finish within {timeout_s:g} s"
    return _summarise(done)
