"""gpu-preflight's vLLM memory model against vLLM's own start-up logs (no GPU needed).

bench/vllm_reference.json holds figures vLLM printed at start-up, copied from public issues and
posts, with the settings they were printed under. For each row:

- KV arithmetic: from the logged "Available KV cache memory", does memory/vllm.py's block and
  group arithmetic give the logged "GPU KV cache size" tokens, the "Maximum concurrency" and,
  for refusals, the logged KV needed and vLLM's estimated maximum length? (Exact up to the
  0.005 GiB rounding of the logged memory.)
- Prediction: estimate_vllm() given only what the planner would know (the GPU's NVML total from
  the GPU catalog, the model's catalog entry, the settings), against the logged KV pool, in
  tokens. Refusals must be predicted as refusals.

    python bench/vllm_kv.py        # writes bench/results/vllm-kv.{md,json}
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "entrypoint"))

from gpu_preflight.memory.vllm import (  # noqa: E402
    VllmConfig,
    batch_limits,
    budget,
    estimate_vllm,
    kv_capacity_tokens,
    kv_layout,
    kv_pool,
    max_concurrency,
    min_kv_bytes_needed,
    vllm_refusal,
)
from gpu_preflight.models.catalog import load_catalog  # noqa: E402
from gpu_preflight.models.types import Artifact, ModelSpec  # noqa: E402

GIB = 2**30
MIB = 2**20
REFERENCE = ROOT / "bench" / "vllm_reference.json"
SCHEMA = ROOT / "bench" / "vllm_reference.schema.json"
GPUS = ROOT / "entrypoint" / "gpu_preflight" / "data" / "gpus.json"
RESULTS = ROOT / "bench" / "results"
TARGET_MEDIAN_PCT = 5.0


class ReferenceError(ValueError):
    """The reference file does not validate or names something the catalogs lack."""


def read_validated(path: Path, schema_path: Path, error: type[ValueError]) -> dict[str, Any]:
    """A JSON document validated against its schema; ``error`` names the file and the place."""
    from jsonschema import Draft202012Validator

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise error(f"{path}: cannot be read as JSON: {e}") from e
    errors = sorted(Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path)
        raise error(f"{path}: {where or '(top)'}: {errors[0].message}")
    result: dict[str, Any] = doc
    return result


def load_reference(path: Path = REFERENCE) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = read_validated(path, SCHEMA, ReferenceError)["rows"]
    return rows


def gpu_catalog() -> dict[str, dict[str, Any]]:
    doc = json.loads(GPUS.read_text(encoding="utf-8"))
    return {g["id"]: g for g in doc["gpus"]}


def model_and_artifact(row: dict[str, Any]) -> tuple[ModelSpec, Artifact]:
    catalog = load_catalog()
    spec = catalog.get(row["model"])
    if spec is None:
        raise ReferenceError(f"row {row['id']}: model {row['model']!r} is not in the catalog")
    for art in spec.artifacts:
        if art.engine == "vllm" and art.quant == row["quant"]:
            return spec, art
    raise ReferenceError(
        f"row {row['id']}: {row['model']} has no vLLM artifact {row['quant']!r}; has "
        + ", ".join(a.quant for a in spec.artifacts if a.engine == "vllm")
    )


def config_for(row: dict[str, Any], gpus: dict[str, dict[str, Any]]) -> VllmConfig:
    gpu = gpus.get(row["gpu"]) if row["gpu"] else None
    if row["gpu"] and gpu is None:
        raise ReferenceError(f"row {row['id']}: GPU {row['gpu']!r} is not in gpus.json")
    return logged_config(row["settings"], gpu, row_version(row))


def logged_config(
    s: dict[str, Any], gpu: dict[str, Any] | None, version: tuple[int, int]
) -> VllmConfig:
    """The settings a vLLM start-up log was printed under, as the memory model takes them
    (this file's rows and bench/gpu_logs.py's entries share it)."""
    return VllmConfig(
        max_model_len=s["max_model_len"],
        # KV-only rows have no GPU: any total works, the arithmetic starts from logged memory.
        gpu_total_bytes=gpu["memory_total_mib"] * MIB if gpu else 80 * GIB,
        gpu_memory_utilization=s.get("gpu_memory_utilization", 0.9),
        tensor_parallel_size=s["tensor_parallel_size"],
        max_num_seqs=s.get("max_num_seqs"),
        max_num_batched_tokens=s.get("max_num_batched_tokens"),
        kv_cache_dtype=s["kv_cache_dtype"],
        enforce_eager=s.get("enforce_eager", False),
        gpu_name=gpu["nvml_name"] if gpu else None,
        chunked_prefill=s.get("chunked_prefill", True),
        vllm_version=version,
    )


def row_version(row: dict[str, Any]) -> tuple[int, int]:
    """The row's vLLM release (major, minor) for the constants keyed to releases (the sampler,
    memory/vllm.py SAMPLER_CHANGED_IN); unknown: the oldest."""
    m = re.search(r"(\d+)\.(\d+)", str(row.get("vllm_version") or ""))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@dataclass(frozen=True)
class RowResult:
    id: str
    engine: str
    model: str
    gpu: str | None
    source: str
    # KV arithmetic from the logged pool
    tokens_from_logged: int | None
    tokens_logged: int | None
    concurrency_from_logged: float | None
    concurrency_logged: float | None
    needed_gib: float | None
    needed_logged_gib: float | None
    est_max_len: int | None
    est_max_len_logged: int | None
    # Prediction
    predicted_kv_gib: float | None
    logged_kv_gib: float
    predicted_tokens: int | None
    reference_tokens: int | None  # logged, or derived from the logged pool
    tokens_error_pct: float | None
    weights_pred_gib: float | None
    weights_logged_gib: float | None
    activation_pred_gib: float | None
    activation_logged_gib: float | None
    refused_logged: str | None
    refused_predicted: str | None  # by the central model
    refused_planned: bool | None  # by the plan's rule (central model less margin)


def refusal_kind(available: int, needed: int) -> str | None:
    if available <= 0:
        return "no_memory"
    if needed > available:
        return "max_model_len"
    return None


def estimated_max_len(spec: ModelSpec, cfg: VllmConfig, available: int) -> int:
    """vLLM's 'estimated maximum model length': the largest L whose one request fits."""
    from dataclasses import replace

    lo, hi, best = 1, cfg.max_model_len, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if min_kv_bytes_needed(spec, replace(cfg, max_model_len=mid)) <= available:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def evaluate(row: dict[str, Any], gpus: dict[str, dict[str, Any]]) -> RowResult:
    spec, art = model_and_artifact(row)
    cfg = config_for(row, gpus)
    logged = row["logged"]
    layout = kv_layout(spec.arch, cfg)
    mnbt, _ = batch_limits(cfg)
    logged_kv = int(logged["kv_cache_gib"] * GIB)
    blocks = kv_pool(layout, logged_kv)
    tokens_from_logged = kv_capacity_tokens(layout, blocks) if logged_kv > 0 else None
    conc = (
        round(max_concurrency(layout, blocks, cfg.max_model_len, mnbt), 2)
        if logged_kv > 0
        else None
    )
    needed = min_kv_bytes_needed(spec, cfg)
    est_len = (
        estimated_max_len(spec, cfg, logged_kv) if "estimated_max_model_len" in logged else None
    )
    reference_tokens = logged.get("kv_tokens", tokens_from_logged)

    predicted_kv = predicted_tokens = error = None
    w_pred = a_pred = None
    refused_pred: str | None = None
    refused_plan: bool | None = None
    if row["gpu"]:
        b = budget(spec, art, cfg)
        e = estimate_vllm(spec, art, cfg)
        predicted_kv = b.available_kv_bytes / GIB
        predicted_tokens = e.kv_capacity_tokens
        w_pred, a_pred = b.weights_bytes / GIB, b.activation_bytes / GIB
        refused_pred = refusal_kind(b.available_kv_bytes, needed)
        refused_plan = vllm_refusal(spec, art, cfg) is not None
        if reference_tokens and predicted_tokens is not None and not logged.get("refused"):
            error = (predicted_tokens - reference_tokens) / reference_tokens * 100
    return RowResult(
        id=row["id"],
        engine=row["engine"],
        model=row["model"],
        gpu=row["gpu"],
        source=row["source"],
        tokens_from_logged=tokens_from_logged,
        tokens_logged=logged.get("kv_tokens"),
        concurrency_from_logged=conc,
        concurrency_logged=logged.get("max_concurrency"),
        needed_gib=round(needed / GIB, 2),
        needed_logged_gib=logged.get("needed_kv_gib"),
        est_max_len=est_len,
        est_max_len_logged=logged.get("estimated_max_model_len"),
        predicted_kv_gib=predicted_kv,
        logged_kv_gib=logged["kv_cache_gib"],
        predicted_tokens=predicted_tokens,
        reference_tokens=reference_tokens,
        tokens_error_pct=error,
        weights_pred_gib=w_pred,
        weights_logged_gib=logged.get("weights_gib"),
        activation_pred_gib=a_pred,
        activation_logged_gib=logged.get("activation_gib"),
        refused_logged=logged.get("refused"),
        refused_predicted=refused_pred,
        refused_planned=refused_plan,
    )


def fmt(x: float | int | None, spec: str = "") -> str:
    if x is None:
        return "-"
    return format(x, spec)


def summary(results: list[RowResult]) -> dict[str, Any]:
    v1 = [
        r.tokens_error_pct for r in results if r.engine == "v1" and r.tokens_error_pct is not None
    ]
    v0 = [
        r.tokens_error_pct for r in results if r.engine == "v0" and r.tokens_error_pct is not None
    ]
    arith = [r for r in results if r.tokens_logged is not None and r.tokens_from_logged is not None]
    refusals = [r for r in results if r.refused_logged and r.gpu is not None]
    fits = [r for r in results if not r.refused_logged and r.gpu is not None]
    return {
        "v1_rows": len(v1),
        "v1_median_abs_error_pct": round(statistics.median(abs(e) for e in v1), 2) if v1 else None,
        "v1_worst_error_pct": round(max(v1, key=abs), 2) if v1 else None,
        "v0_errors_pct": [round(e, 2) for e in v0],
        "arithmetic_rows": len(arith),
        "arithmetic_max_token_diff": max(
            (
                abs(r.tokens_from_logged - r.tokens_logged)
                for r in arith  # type: ignore[operator]
            ),
            default=None,
        ),
        "refusals_logged": len(refusals),
        "refusals_predicted": sum(1 for r in refusals if r.refused_predicted),
        "fits_refused_by_model": [r.id for r in fits if r.refused_predicted],
        "fits_refused_by_plan": [r.id for r in fits if r.refused_planned],
        "target_median_pct": TARGET_MEDIAN_PCT,
    }


def markdown(results: list[RowResult], s: dict[str, Any]) -> str:
    out = [
        "# vLLM memory model vs vLLM's own start-up logs",
        "",
        "Written by `python bench/vllm_kv.py` from `bench/vllm_reference.json` (17 start-up logs "
        "from public issues and posts, each row citing its source). No GPU is involved: the "
        "comparison is between numbers vLLM printed and what `memory/vllm.py` computes.",
        "",
        "## Summary",
        "",
        f"- Prediction (V1 rows that started, given only the settings, the GPU's NVML total and "
        f"the catalog): KV pool in tokens within **{fmt(s['v1_median_abs_error_pct'])}% median**, "
        f"worst {fmt(s['v1_worst_error_pct'])}% over {s['v1_rows']} rows "
        f"(target: {s['target_median_pct']}% median). Negative means fewer tokens than vLLM got: "
        "the safe direction.",
        f"- V0 rows (no chunked prefill): {', '.join(f'{e}%' for e in s['v0_errors_pct']) or '-'}.",
        f"- KV arithmetic from the logged pool: {s['arithmetic_rows']} rows with a logged token "
        f"count, largest difference {fmt(s['arithmetic_max_token_diff'])} tokens (the logged GiB "
        "has 2 decimals: 0.005 GiB of rounding is 40 tokens of Llama-3.1-8B, 109 of Qwen3-30B-A3B "
        "with an fp8 cache).",
        f"- Refusals: {s['refusals_predicted']} of {s['refusals_logged']} logged refusals "
        "predicted. Rows that started but the model predicts a refusal: "
        + (", ".join(s["fits_refused_by_model"]) or "none")
        + "; that the plan (model less margin_bytes) would not run at the logged settings: "
        + (", ".join(s["fits_refused_by_plan"]) or "none")
        + ".",
        "- `llmd-gpt-oss-120b-h100` is an outlier the model cannot match: its published figures "
        "do not add up (budget 71.26 - weights 64.38 - activation 7.38 - non-torch 0.13 < 0, yet "
        "3.33 GiB of KV is logged; the activation column repeats the 20b row). Two other "
        "gpt-oss-120b logs on an H100 (vllm#23278, vllm#27508) agree with the model. The model "
        "errs on the refusing side there.",
        "",
        "## KV arithmetic from the logged pool",
        "",
        "| row | logged KV GiB | tokens (ours / logged) | concurrency (ours / logged) "
        "| KV needed GiB (ours / logged) | est. max len (ours / logged) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        out.append(
            f"| {r.id} | {r.logged_kv_gib} | {fmt(r.tokens_from_logged, ',')} / "
            f"{fmt(r.tokens_logged, ',')} | {fmt(r.concurrency_from_logged)} / "
            f"{fmt(r.concurrency_logged)} | {fmt(r.needed_gib)} / {fmt(r.needed_logged_gib)} | "
            f"{fmt(r.est_max_len, ',')} / {fmt(r.est_max_len_logged, ',')} |"
        )
    out += [
        "",
        "## Prediction from the settings",
        "",
        "| row | engine | GPU | weights GiB (ours / logged) | activation GiB (ours / logged) "
        "| KV GiB (ours / logged) | tokens (ours / ref) | error | refused (logged / ours / plan) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.gpu is None:
            continue
        out.append(
            f"| {r.id} | {r.engine} | {r.gpu} | {fmt(r.weights_pred_gib, '.2f')} / "
            f"{fmt(r.weights_logged_gib)} | {fmt(r.activation_pred_gib, '.2f')} / "
            f"{fmt(r.activation_logged_gib)} | {fmt(r.predicted_kv_gib, '.2f')} / "
            f"{r.logged_kv_gib} | {fmt(r.predicted_tokens, ',')} / "
            f"{fmt(r.reference_tokens, ',')} | {fmt(r.tokens_error_pct, '+.1f')}% | "
            f"{r.refused_logged or 'no'} / {r.refused_predicted or 'no'} / "
            f"{'yes' if r.refused_planned else 'no'} |"
        )
    out += [
        "",
        "Reference tokens are the logged 'GPU KV cache size' where the source quotes it, else "
        "vLLM's own arithmetic applied to the logged 'Available KV cache memory'.",
        "",
        "## Sources",
        "",
    ]
    out += [f"- `{r.id}`: {r.source}" for r in results]
    return "\n".join(out) + "\n"


def main() -> int:
    try:
        rows = load_reference()
        gpus = gpu_catalog()
        results = [evaluate(row, gpus) for row in rows]
    except ReferenceError as e:
        print(f"vllm_kv: {e}", file=sys.stderr)
        return 2
    s = summary(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vllm-kv.md").write_text(markdown(results, s), encoding="utf-8")
    (RESULTS / "vllm-kv.json").write_text(
        json.dumps({"summary": s, "rows": [r.__dict__ for r in results]}, indent=2) + "\n",
        encoding="utf-8",
    )
    print(json.dumps(s, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
