"""Plan <-> its JSON document, validated against schemas/plan.schema.json both ways."""

from __future__ import annotations

from typing import Any

from gpu_preflight.plan.types import Plan
from gpu_preflight.schemas import validate
from gpu_preflight.serde import from_dict, to_dict


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    doc: dict[str, Any] = to_dict(plan)
    validate("plan", doc, "the plan")
    return doc


def plan_from_dict(doc: Any) -> Plan:
    validate("plan", doc, "plan document")
    return from_dict(Plan, doc)
