"""The model as the user named it: a catalog id, a Hub repo (org/repo[:QUANT][@rev]), a local file
or directory, resolved to one ``ModelRequest`` before planning; the user's own draft model and the
extra files (--mmproj, --lora) whose memory the plan must count.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_preflight import launch
from gpu_preflight.inputs.flags import FlagValueError, env_setting
from gpu_preflight.inputs.model_request import DRAFT_TOKENS, Draft, ModelRequest
from gpu_preflight.inputs.overrides import Overrides
from gpu_preflight.inputs.settings import Sourced, value_of
from gpu_preflight.models.catalog import Catalog
from gpu_preflight.models.errors import ModelError, ModelFileError
from gpu_preflight.models.gguf_file import mmproj_bytes, mmproj_compute_bytes
from gpu_preflight.models.hub import parse_hub_ref, resolve_hub_model
from gpu_preflight.models.layout import unlisted_gguf_architecture
from gpu_preflight.models.resolve import known_model, resolve_model
from gpu_preflight.models.types import Artifact, ModelSpec

# llama-server's default file for `-hf org/repo` without a tag (common/download.cpp: "latest",
# which the Hub resolves to Q4_K_M when the repo has it).
DEFAULT_HF_QUANT = "Q4_K_M"
_NO_MEMORY_SPEC_METHODS = ("ngram", "ngram_gpu", "suffix")  # vLLM methods without a model
_NO_MEMORY_SPEC_TYPES = ("ngram-cache", "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod")


@dataclass(frozen=True)
class _Named:
    spec: ModelSpec
    artifact: Artifact | None  # the exact artifact named; None: the model, any artifact
    quant: str | None
    source: Sourced[str]
    local_copy: str | None = None  # the Hub header's sparse copy (for llama.cpp's dry run)
    revision: str | None = None  # the commit the facts were read at (a model named on the Hub)


def _split_quant(text: str) -> tuple[str, str | None]:
    """ "id@Q8_0" or "org/repo:Q4_K_M" -> (base, quant); a path keeps its ':' and '@'."""
    if text.startswith(("/", "./", "../", "~")) or text.endswith(".gguf"):
        return text, None
    base, at, q = text.rpartition("@")
    if at and base and "/" not in base and "/" not in q and not _exists(text):
        return base, q  # catalog-id@QUANT (an org/repo@X is a Hub revision)
    base, colon, q = text.rpartition(":")
    if colon and base.count("/") == 1 and q and "/" not in q:
        return base, q
    return text, None


def _by_repo(catalog: Catalog, repo: str) -> list[tuple[ModelSpec, Artifact]]:
    key = repo.strip().lower()
    return [(m, a) for m in catalog.models for a in m.artifacts if a.repo.lower() == key]


def _name_one(
    knob: str, s: Sourced[str], catalog: Catalog, hf_file: str | None, ctx: _HubContext
) -> _Named:
    text = str(s.value).strip()
    where = s.where
    base, quant = _split_quant(text)
    repo_hits = _by_repo(catalog, base)
    if repo_hits:
        spec = repo_hits[0][0]
        arts = [a for _, a in repo_hits]
        if hf_file is not None:
            arts = [a for a in arts if (a.file or "").lower() == hf_file.lower()]
            if not arts:
                have = ", ".join(a.file or "" for _, a in repo_hits)
                raise ModelError(
                    f"LLAMA_ARG_HF_FILE / --hf-file {hf_file!r} is not a file of {base} the "
                    f"planner knows. Accepted: {have}."
                )
        elif quant is not None:
            arts = [a for a in arts if a.quant.lower() == quant.lower()]
            if not arts:
                have = ", ".join(a.quant for _, a in repo_hits)
                raise ModelError(
                    f"{where}={text!r}: {base} has no quant {quant}. Accepted: {have}."
                )
        elif len(arts) > 1:
            arts = [a for a in arts if a.quant == DEFAULT_HF_QUANT] or arts[:1]
        return _Named(spec, arts[0], quant, s)
    if parse_hub_ref(text) is not None and not _exists(text):
        # Any model on the Hub (or in the local HF cache): its exact facts, no weights fetched.
        named_rev = parse_hub_ref(text).revision  # type: ignore[union-attr]
        if named_rev and ctx.revision and named_rev != ctx.revision:
            raise FlagValueError(
                "engine argument --revision",
                ctx.revision,
                f"the revision named in {where}={text!r}, or only one of the two set",
                "it disagrees with the model's name",
            )
        res = resolve_hub_model(
            text,
            ctx.env,
            ctx.cache_dir,
            revision=ctx.revision,
            file=hf_file,
            engine="llama.cpp" if knob == "hf_repo" else ctx.engine,  # type: ignore[arg-type]
            known=[m.id for m in catalog.models] + [m.hf_id for m in catalog.models],
            var_name=where,
        )
        spec = known_model(res.spec, catalog)
        revision = named_rev or ctx.revision
        if revision and res.engine == "llama.cpp":
            raise FlagValueError(
                where,
                text,
                "a GGUF repo without @REVISION: llama-server's -hf downloads the default branch "
                "and cannot pin one (download the file and pass its path to pin it)",
                "a revision llama-server cannot serve",
            )
        return _Named(
            spec,
            spec.artifacts[0],
            None,
            s,
            local_copy=str(res.local_copy) if res.engine == "llama.cpp" else None,
            revision=res.revision if revision else None,
        )
    spec = resolve_model(base, catalog, where)
    art = None
    if spec.artifacts and spec.artifacts[0].path is not None:
        art = spec.artifacts[0]  # a file or directory on disk: exactly that
    return _Named(spec, art, quant, s)


@dataclass(frozen=True)
class _HubContext:
    env: Mapping[str, str]
    cache_dir: Path | None
    engine: str | None
    revision: str | None  # vLLM's --revision, when given


def _exists(text: str) -> bool:
    try:
        return Path(text).expanduser().exists()
    except (OSError, RuntimeError, ValueError):
        return False


def hub_cache_dir(env: Mapping[str, str]) -> Path | None:
    """Header copies live in the profile volume, so a restart does not ask the Hub again."""
    # The variable through its row's parser (inputs/flags.py env_setting: one parser per variable).
    pdir = Path(env_setting(env, "PREFLIGHT_PROFILE_DIR") or launch.DEFAULT_PROFILE_DIR)
    try:
        if pdir.is_dir() and os.access(pdir, os.W_OK):
            return pdir / "hub-headers"
    except OSError:
        pass
    return None  # hub.default_cache_dir: PREFLIGHT_HUB_HEADERS or a temporary directory


def _same_model(a: _Named, b: _Named) -> bool:
    if a.spec.id != b.spec.id:
        return False
    if a.artifact is not None and b.artifact is not None:
        return (a.artifact.repo, a.artifact.file, a.artifact.path) == (
            b.artifact.repo,
            b.artifact.file,
            b.artifact.path,
        )
    return a.quant is None or b.quant is None or a.quant.lower() == b.quant.lower()


def resolve_request(
    o: Overrides, catalog: Catalog, env: Mapping[str, str] | None = None
) -> ModelRequest | None:
    """Every place that named a model must name the same one; the most exact name wins."""
    if not o.model_refs:
        for d in (o.draft_model, o.draft_hf, o.speculative_config):
            if d is not None:
                raise FlagValueError(
                    d.where,
                    str(d.value)[:200],
                    "a draft together with the model it drafts for (PREFLIGHT_MODEL or the "
                    "engine's model flag), so both can be planned",
                    "no model is named",
                )
        # A projector or adapter belongs to one model: with the model left to auto-selection
        # its bytes would be planned against whichever model is chosen, so it is refused.
        for d in (o.mmproj, o.lora, o.lora_scaled):
            if d is not None:
                raise FlagValueError(
                    d.where,
                    str(d.value)[:200],
                    "a projector or adapter together with the model it belongs to "
                    "(PREFLIGHT_MODEL or the engine's model flag)",
                    "no model is named",
                )
        return None
    hf_file = value_of(o.hf_file)
    env = env or {}
    engine = value_of(o.engine)
    ctx = _HubContext(env, hub_cache_dir(env), engine, value_of(o.revision))
    named = [_name_one(knob, s, catalog, hf_file, ctx) for knob, s in o.model_refs]
    first = named[0]
    for other in named[1:]:
        if not _same_model(first, other):
            a, b = first.source, other.source
            raise FlagValueError(
                b.where,
                str(b.value),
                f"the same model as {a.where}={a.value!r}, or only one of the two set",
                f"it names a different model from {a.where}",
            )
    best = next((n for n in named if n.artifact is not None), first)
    quant = best.quant
    q = o.quantization
    if q is not None:
        # A vLLM checkpoint named with a --quantization it does not carry is vLLM's to refuse:
        # the plan refuses it naming vLLM's rule (plan/vllm.py quantization_rule), exit 3.
        vllm_art = best.artifact is not None and best.artifact.engine == "vllm"
        if (
            best.artifact is not None
            and not vllm_art
            and _quant_name(q.value) != best.artifact.quant.lower()
        ):
            raise FlagValueError(
                q.where,
                str(q.value),
                f"{best.artifact.quant}, the quantization of {best.artifact.repo} "
                f"({best.source.where}), or leave it unset",
                "it disagrees with the model named",
            )
        quant = quant or q.value
    extra = _extra_files(o)
    return ModelRequest(
        spec=best.spec,
        quant=quant,
        source=best.source.source,
        artifact=best.artifact,
        draft=resolve_draft(o, catalog),
        extra_gpu_bytes=extra,
        local_copy=best.local_copy,
        revision=best.revision,
    )


def _quant_name(q: Any) -> str:
    return {"awq_marlin": "awq", "gptq_marlin": "gptq", "none": "bf16"}.get(str(q), str(q))


def resolve_draft(o: Overrides, catalog: Catalog) -> Draft | None:
    """The user's own draft model, resolved like the target, or None (none, or costs nothing)."""
    cfg = o.speculative_config
    if cfg is not None:
        doc = cfg.value
        method = str(doc.get("method", "draft_model" if "model" in doc else ""))
        if method in _NO_MEMORY_SPEC_METHODS:
            return None
        model = doc.get("model")
        if method != "draft_model" or not isinstance(model, str):
            raise FlagValueError(
                cfg.where,
                str(cfg.value)[:200],
                "method draft_model with a catalog model, or ngram / suffix (no draft memory); "
                f"{method or 'this method'} is not modelled by the planner",
            )
        tokens = doc.get("num_speculative_tokens", DRAFT_TOKENS)
        return _draft_from_repo(
            model, "vllm", catalog, cfg, int(tokens) if isinstance(tokens, int) else DRAFT_TOKENS
        )
    hf, md = o.draft_hf, o.draft_model
    # llama-server's own --spec-draft-n-max default (the table: common_params_speculative_draft)
    n_max: int = o.resolved("draft_n_max", "llama.cpp").value
    if hf is not None:
        d = _draft_from_repo(hf.value, "llama.cpp", catalog, hf, n_max)
        if md is not None and d.artifact.file != Path(md.value).name:
            raise FlagValueError(
                md.where, str(md.value), f"{d.artifact.file}, the file of {hf.value}"
            )
        return d
    if md is not None:
        spec = resolve_model(md.value, catalog, md.where)
        unlisted = unlisted_gguf_architecture(spec.arch.architecture)
        if unlisted is not None:
            # llama.cpp's dry run leaves the draft out (it is server-only: engine_check.py
            # fit_params_args), so nothing would check the closed form for it
            raise FlagValueError(
                md.where,
                str(md.value),
                "a draft of an architecture gguf lists",
                f"its {unlisted}, and llama.cpp's dry run does not size a draft",
            )
        return Draft(spec, spec.artifacts[0], tokens=n_max, user=md.source)
    st = o.spec_type
    if st is not None and all(t in _NO_MEMORY_SPEC_TYPES for t in st.value.split(",")):
        return None
    return None


def _draft_from_repo(
    repo: str, engine: str, catalog: Catalog, s: Sourced[Any], tokens: int = DRAFT_TOKENS
) -> Draft:
    base, quant = _split_quant(repo)
    hits = [(m, a) for m, a in _by_repo(catalog, base) if a.engine == engine]
    if quant:
        hits = [(m, a) for m, a in hits if a.quant.lower() == quant.lower()]
    if not hits:
        raise FlagValueError(
            s.where,
            repo,
            f"a draft model repo from the catalog ({engine}), so its memory can be planned",
            "not a draft the planner knows",
        )
    m, a = hits[0]
    return Draft(m, a, tokens=tokens, user=s.source)


def _file_bytes(s: Sourced[str], text: str) -> int:
    path = Path(text).expanduser()
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FlagValueError(s.where, text, "a readable local file", exc.strerror) from None
    if not stat.S_ISREG(st.st_mode):
        raise FlagValueError(s.where, text, "a regular file", "not a regular file")
    return st.st_size


def _extra_files(o: Overrides) -> int:
    """Bytes of the user's --mmproj / --lora files: weights the engine loads besides the model."""
    total = 0
    mm = o.mmproj
    if mm is not None:
        # The projector's own tensors (a clip GGUF, refused otherwise) and the compute buffer
        # clip.cpp reserves for its warmup image, both on the projector's device.
        _file_bytes(mm, str(mm.value))
        try:
            path = Path(str(mm.value)).expanduser()
            total += mmproj_bytes(path) + mmproj_compute_bytes(path)
        except ModelFileError as exc:
            raise FlagValueError(mm.where, str(mm.value), "a projector GGUF", str(exc)) from None
    lora = o.lora
    if lora is not None:
        for part in lora.value.split(","):
            total += _file_bytes(lora, part.strip())
    scaled = o.lora_scaled
    if scaled is not None:
        for part in scaled.value.split(","):
            total += _file_bytes(scaled, part.rsplit(":", 1)[0].strip())
    return total


def refuse_unmodelled(o: Overrides) -> None:
    """Values whose memory the planner cannot predict: refused now, before any probe."""
    for s, accepted in (
        (o.mmproj_url, "a local file in --mmproj instead (the projector's size must be known)"),
        (o.override_tensor, "--n-cpu-moe or --n-gpu-layers (tensor overrides are not modelled)"),
        (o.n_cpu_ffn, "--n-gpu-layers (FFN overrides are not modelled)"),
        (o.rpc, "local devices only (RPC devices are not probed)"),
        (o.override_kv, "the model's own metadata (overrides can change any size)"),
        (o.draft_override_tensor, "--spec-draft-ngl (draft overrides are not modelled)"),
        (o.draft_n_cpu_moe, "--spec-draft-ngl (draft overrides are not modelled)"),
        (o.draft_device, "the target's devices (the draft follows them in the plan)"),
    ):
        if s is not None:
            raise FlagValueError(s.where, str(s.value), accepted, "its memory cannot be planned")
    for sw, accepted in (
        (
            o.no_kv_offload,
            "the KV cache offloaded (llama.cpp's default; the plan puts it on the GPUs)",
        ),
        (o.draft_cpu_moe, "--spec-draft-ngl (draft overrides are not modelled)"),
    ):
        if sw is not None and sw.value is True:
            raise FlagValueError(sw.where, "on", accepted, "its memory cannot be planned")
    if o.kv_offload is not None and o.kv_offload.value is False:
        raise FlagValueError(
            o.kv_offload.where,
            "off",
            "on, or unset (llama.cpp's default: the KV cache on the GPUs, as planned)",
            "its memory cannot be planned",
        )
    auto = o.mmproj_auto
    if auto is not None and auto.value is True:
        raise FlagValueError(
            auto.where,
            "on",
            "--no-mmproj, or a local --mmproj FILE (the repo's projector size is not known)",
            "its memory cannot be planned",
        )
    if o.draft_model is None and o.draft_hf is None:
        st = o.spec_type
        if st is not None and not all(t in _NO_MEMORY_SPEC_TYPES for t in st.value.split(",")):
            raise FlagValueError(
                st.where,
                st.value,
                "an ngram type (" + ", ".join(_NO_MEMORY_SPEC_TYPES) + "), or a draft model with "
                "--spec-draft-hf / --spec-draft-model",
                "a draft type without a draft model",
            )
