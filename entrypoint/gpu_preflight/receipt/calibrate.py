"""Receipts turned into the next plan's evidence (pure: the receipts come in as values).

Two uses, with different keys (receipt/types.py ``ReceiptKey``):

- **Decode band, by the full key** (GPU model, engine, model, quant and settings). The roofline
  band (plan/forecast.py) is a guess at efficiency; receipts on the same key replace it by
  ``[min measured x (1 - SPREAD), max measured x (1 + SPREAD)]`` and the plan says
  "calibrated from N receipts". ``SPREAD`` is the run-to-run noise of a 128-token decode.
- **Memory margin, by the memory key** (GPU model, engine, model, quant: settings left out). A
  receipt whose measured use on a device is above the plan's prediction widens the margin of
  every later plan of that model on that card *at once*, by the shortfall plus ``FLOOR_BYTES``,
  so the next prediction is never below what was measured plus the floor. Margins never tighten:
  a receipt under the prediction is not evidence that the next start (another driver, another
  fragmentation) will be too, and the fixed 2% / 512 MiB GPU margin is what absorbs that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gpu_preflight.inputs.flags import spelling_index
from gpu_preflight.plan.types import Calibration, Plan
from gpu_preflight.receipt.types import Receipt, ReceiptKey

SPREAD = 0.10
FLOOR_BYTES = 256 * 2**20
# argv values that change from start to start without changing what runs.
_VOLATILE = frozenset({"--host", "--port", "--alias", "-a", "--served-model-name", "--log-file"})
MIB = 2**20


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _gpu_names(plan: Plan) -> str:
    if plan.predicted is None:
        return "CPU"
    names = [
        d.description.rsplit(" (GPU ", 1)[0] for d in plan.predicted.devices if d.device != "CPU"
    ]
    return ", ".join(names) if names else "CPU"


def _settings(plan: Plan) -> dict[str, str]:
    """context, parallel and a digest of the argv (its volatile and secret values left out)."""
    index = spelling_index()
    kept: list[str] = []
    skip = False
    for tok in plan.argv[1:]:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        rows = index.get(name, [])
        secret = any(r.role == "secret" for r in rows)
        if name in _VOLATILE or secret:
            skip = "=" not in tok and (secret or name in _VOLATILE)
            continue
        kept.append(tok)
    if plan.model is not None:
        # The model's own location is in the key's model field already; a path that moves (a
        # renamed mount) must not look like new settings.
        where = {plan.model.path, plan.model.repo, plan.model.file}
        kept = [t for t in kept if t not in where]
    return {
        "context": str(plan.context),
        "parallel": str(plan.parallel),
        "argv_sha256": _sha(*kept),
    }


def receipt_key(plan: Plan) -> ReceiptKey:
    gpu = _gpu_names(plan)
    engine = plan.engine or "none"
    model = plan.model.id if plan.model else "none"
    quant = plan.model.quant if plan.model else "none"
    settings = _settings(plan)
    return ReceiptKey(
        id=_sha(gpu, engine, model, quant, *(f"{k}={v}" for k, v in sorted(settings.items()))),
        memory_id=_sha(gpu, engine, model, quant),
        gpu=gpu,
        engine=engine,
        model=model,
        quant=quant,
        settings=settings,
    )


@dataclass(frozen=True)
class Widening:
    """Extra bytes kept free, from receipts that measured more than their plan predicted."""

    gpu_bytes: int
    host_bytes: int
    receipts: int  # receipts on the memory key
    notes: tuple[str, ...]

    @property
    def any(self) -> bool:
        return self.gpu_bytes > 0 or self.host_bytes > 0


def widening(history: Sequence[Receipt], memory_id: str) -> Widening:
    gpu = host = 0
    notes: list[str] = []
    on_key = [r for r in history if r.key.memory_id == memory_id and r.status != "failed"]
    for r in on_key:
        for d in r.memory:
            if not d.under or d.error_bytes is None or d.measured_bytes is None:
                continue
            extra = d.error_bytes + FLOOR_BYTES
            if d.device == "CPU":
                host = max(host, extra)
            else:
                gpu = max(gpu, extra)
            notes.append(
                f"the receipt of {r.created_at} measured {d.measured_bytes / MIB:.0f} MiB on "
                f"{d.device} against {d.predicted_bytes / MIB:.0f} MiB predicted "
                f"({d.method}): under by {d.error_bytes / MIB:.0f} MiB"
            )
    if gpu or host:
        parts = []
        if gpu:
            parts.append(f"{gpu / MIB:.0f} MiB on every GPU")
        if host:
            parts.append(f"{host / MIB:.0f} MiB of host RAM")
        notes.append(
            "margin widened by " + " and ".join(parts) + " (the shortfall plus a fixed "
            f"{FLOOR_BYTES // MIB} MiB floor), because a receipt showed an under-prediction for "
            "this model on this GPU; it never tightens again on its own"
        )
    return Widening(gpu, host, len(on_key), tuple(notes))


def _fmt(x: float) -> str:
    return f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def _summary(r: Receipt) -> str:
    parts = [f"last receipt ({r.created_at}, {r.status})"]
    if r.decode and r.decode.single and r.decode.single.decode_tok_s:
        inside = {True: "inside", False: "outside", None: "no"}[r.decode.within_band]
        parts.append(
            f"decode {_fmt(r.decode.single.decode_tok_s)} tok/s ({inside} band)"
        )
    for d in r.memory:
        if d.measured_bytes is not None and d.error_fraction is not None:
            parts.append(
                f"{d.device} {d.measured_bytes / MIB:.0f} MiB measured vs "
                f"{d.predicted_bytes / MIB:.0f} MiB predicted ({d.error_fraction:+.1%})"
            )
    return ": ".join(parts[:1]) + (": " + "; ".join(parts[1:]) if parts[1:] else "")


def calibrate(
    plan: Plan, history: Sequence[Receipt], widened: Widening | None = None
) -> Plan:
    """The plan with its decode band calibrated from same-key receipts and the evidence noted."""
    if plan.verdict != "ship" or plan.predicted is None:
        return plan
    key = receipt_key(plan)
    usable = [r for r in history if r.status != "failed"]
    same = [
        r.decode.single.decode_tok_s
        for r in usable
        if r.key.id == key.id and r.decode and r.decode.single and r.decode.single.decode_tok_s
    ]
    notes = list(plan.predicted.notes)
    pred = plan.predicted
    if same:
        low, high = min(same) * (1 - SPREAD), max(same) * (1 + SPREAD)
        was = (
            f"{_fmt(pred.decode_tok_s_low)}-{_fmt(pred.decode_tok_s_high)} tok/s"
            if pred.decode_tok_s_low is not None and pred.decode_tok_s_high is not None
            else "none"
        )
        notes.append(
            f"decode band calibrated from {len(same)} receipt{'s' if len(same) != 1 else ''} on "
            f"this GPU, model and settings: {_fmt(low)}-{_fmt(high)} tok/s (measured "
            f"{_fmt(min(same))}-{_fmt(max(same))}, +/-{SPREAD:.0%}); the roofline forecast was "
            f"{was}"
        )
        pred = replace(pred, decode_tok_s_low=round(low, 1), decode_tok_s_high=round(high, 1))
    if widened is not None:
        notes.extend(widened.notes)
    if history:
        notes.append(_summary(history[-1]))
    mem_receipts = widened.receipts if widened is not None else 0
    if not same and not mem_receipts and not history:
        return plan
    cal = Calibration(
        key_id=key.id,
        memory_key_id=key.memory_id,
        decode_receipts=len(same),
        memory_receipts=mem_receipts,
        gpu_margin_added_bytes=widened.gpu_bytes if widened else 0,
        host_margin_added_bytes=widened.host_bytes if widened else 0,
    )
    return replace(plan, predicted=replace(pred, notes=tuple(notes)), calibration=cal)
