"""plan() and what it takes, from the modules that each do one job.

- ``request``: the user's values and a tier -> one ``Wants``; the ``ModelRequest`` and catalogue.
- ``search``: the candidate search (tiers, models, engines, offload) and ``plan()`` itself.
- ``llamacpp`` / ``vllm``: each engine's settings record, its fit and its argv.
- ``draft``: the catalog's speculative-decoding draft. ``ship`` / ``refusal``: the two documents.
"""

from __future__ import annotations

from gpu_preflight.inputs.model_request import ModelRequest
from gpu_preflight.plan.request import Catalogue
from gpu_preflight.plan.search import plan

__all__ = ["Catalogue", "ModelRequest", "plan"]
