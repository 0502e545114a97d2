"""Roofline decode-speed forecast: a token reads every active weight (and the KV) once.

Decode is memory-bound at batch 1, so tokens/s <= bandwidth / bytes read per token; with part of
the model in host RAM the two reads add up in time. Real engines reach a fraction of the roofline:
the band below is [LOW, HIGH] x roofline, the range llama.cpp decode is commonly reported at on
GPUs and CPUs; the floor check uses the low end so that a forecast never flatters the machine.
"""

from __future__ import annotations

from dataclasses import dataclass

LOW_EFFICIENCY = 0.5
HIGH_EFFICIENCY = 0.8


@dataclass(frozen=True)
class DecodeForecast:
    roofline_tok_s: float
    low_tok_s: float
    high_tok_s: float
    gpu_bytes_per_token: int
    cpu_bytes_per_token: int


def forecast_decode(
    gpu_bytes_per_token: int,
    cpu_bytes_per_token: int,
    gpu_bandwidth_gb_s: float | None,
    cpu_bandwidth_gb_s: float | None,
) -> DecodeForecast | None:
    """None when a bandwidth the reads need is unknown (never a guess)."""
    seconds = 0.0
    if gpu_bytes_per_token:
        if not gpu_bandwidth_gb_s:
            return None
        seconds += gpu_bytes_per_token / (gpu_bandwidth_gb_s * 1e9)
    if cpu_bytes_per_token:
        if not cpu_bandwidth_gb_s:
            return None
        seconds += cpu_bytes_per_token / (cpu_bandwidth_gb_s * 1e9)
    if seconds <= 0:
        return None
    roof = 1.0 / seconds
    return DecodeForecast(
        roofline_tok_s=roof,
        low_tok_s=roof * LOW_EFFICIENCY,
        high_tok_s=roof * HIGH_EFFICIENCY,
        gpu_bytes_per_token=gpu_bytes_per_token,
        cpu_bytes_per_token=cpu_bytes_per_token,
    )
