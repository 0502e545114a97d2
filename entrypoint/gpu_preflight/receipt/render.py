"""A receipt in a few lines for a person: the watcher's log and `gpu-preflight receipt`."""

from __future__ import annotations

from gpu_preflight.receipt.types import Receipt

MIB = 2**20


def _rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def summary_lines(r: Receipt) -> list[str]:
    lines = [
        f"{r.status}: {r.key.engine} {r.key.model} [{r.key.quant}] on {r.key.gpu}, "
        f"healthy after {r.engine.healthy_after_s if r.engine.healthy_after_s is not None else '-'} s"
    ]
    d = r.decode
    if d is not None and d.single is not None:
        band = (
            f"band {_rate(d.band_low_tok_s)}-{_rate(d.band_high_tok_s)} ({d.band_source})"
            if d.band_low_tok_s is not None
            else "no band"
        )
        verdict = {True: "inside", False: "OUTSIDE", None: "not compared"}[d.within_band]
        floor = ""
        if d.floor_tok_s is not None:
            floor = f"; floor {d.floor_tok_s:g} {'cleared' if d.cleared_floor else 'NOT cleared'}"
        lines.append(
            f"decode {_rate(d.single.decode_tok_s)} tok/s ({d.single.source}), prefill "
            f"{_rate(d.single.prefill_tok_s)} tok/s; {band}: {verdict}{floor}"
        )
        if d.parallel is not None:
            lines.append(
                f"{d.parallel.streams} streams: {_rate(d.parallel.aggregate_tok_s)} tok/s together, "
                f"{_rate(d.parallel.decode_tok_s)} each"
            )
    for m in r.memory:
        if m.measured_bytes is None:
            lines.append(f"{m.device}: predicted {m.predicted_bytes / MIB:.0f} MiB, not measured")
            continue
        side = "UNDER-predicted" if m.under else "within the prediction"
        lines.append(
            f"{m.device}: measured {m.measured_bytes / MIB:.0f} MiB ({m.method}) vs predicted "
            f"{m.predicted_bytes / MIB:.0f} MiB, {m.error_fraction:+.1%}: {side}"
        )
    if r.engine.kv_capacity_tokens is not None:
        lines.append(
            f"KV pool {r.engine.kv_capacity_tokens:,} tokens (engine) vs "
            f"{r.engine.predicted_kv_capacity_tokens or 0:,} planned"
        )
    lines += [f"warning: {w}" for w in r.warnings]
    return lines
