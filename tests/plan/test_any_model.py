"""A model named only by its Hub id, not in the catalog, is planned exactly and served as named.

The real huggingface_hub talks to tests/support/fake_hub.py at HF_ENDPOINT (127.0.0.1), which
serves real config.json texts, safetensors headers and sparse GGUFs. No weights are fetched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.models.test_hub import TINY, TINY_CONFIG
from tests.plan.conftest import profile_for
from tests.support.fake_hub import FakeHub, hf_tensors, safetensors_repo
from tests.support.gguf_factory import write_gguf

from gpu_preflight import pipeline
from gpu_preflight.errors import InvalidInput


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    d = tmp_path_factory.mktemp("anymodel")
    st = safetensors_repo(d / "st", TINY_CONFIG, hf_tensors(TINY), 1)
    g = d / "g"
    g.mkdir()
    q8 = write_gguf(g / "tiny-Q8_0.gguf", TINY, "Q8_0")
    f16 = write_gguf(g / "tiny-F16.gguf", TINY, "F16")
    with FakeHub() as h:
        h.add("someorg/Tiny-Llama", st, revisions={"v1": st})
        h.add("someorg/Tiny-GGUF", {"tiny-Q8_0.gguf": q8, "tiny-F16.gguf": f16})
        yield h


def _env(hub: FakeHub, tmp: Path, **more: str) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp / "hf"),
        "PREFLIGHT_PROFILE_DIR": str(tmp / "profile"),
        **more,
    }


def _plan(env: dict[str, str], argv: tuple[str, ...] = (), gpu: str = "rtx-4090"):
    inputs = pipeline.prepare(env, argv)
    return inputs, pipeline.plan_on(inputs, profile_for(gpu), ("vllm", "llama.cpp"))


def test_a_safetensors_repo_not_in_the_catalog_is_planned_for_vllm(hub, tmp_path):
    (tmp_path / "profile").mkdir()
    _, p = _plan(_env(hub, tmp_path, VLLM_MODEL="someorg/Tiny-Llama"))
    assert p.verdict == "ship", p.reasons
    assert p.engine == "vllm" and p.argv[:3] == ("vllm", "serve", "someorg/Tiny-Llama")
    assert p.model.repo == "someorg/Tiny-Llama"
    # The header copies are kept in the profile volume: a restart reads them, not the Hub.
    assert (tmp_path / "profile" / "hub-headers").is_dir()


def test_a_gguf_repo_with_a_quant_tag_is_served_by_llama_cpp_with_that_file(hub, tmp_path):
    inputs, p = _plan(_env(hub, tmp_path), ("-hf", "someorg/Tiny-GGUF:Q8_0"))
    assert p.verdict == "ship" and p.engine == "llama.cpp"
    i = p.argv.index("--hf-repo")
    assert p.argv[i + 1 : i + 4] == ("someorg/Tiny-GGUF", "--hf-file", "tiny-Q8_0.gguf")
    assert inputs.model.local_copy and Path(inputs.model.local_copy).is_file()


def test_a_revision_is_pinned_on_vllms_command_line(hub, tmp_path):
    _, p = _plan(_env(hub, tmp_path, PREFLIGHT_MODEL="someorg/Tiny-Llama@v1"))
    assert p.verdict == "ship"
    rev = p.argv[p.argv.index("--revision") + 1]
    assert len(rev) == 40 and p.argv.count("--revision") == 1


def test_a_revision_llama_server_cannot_pin_is_an_error(hub, tmp_path):
    with pytest.raises(InvalidInput) as info:
        _plan(_env(hub, tmp_path, PREFLIGHT_MODEL="someorg/Tiny-GGUF@main:Q8_0"))
    assert "cannot pin" in str(info.value)


def test_an_unknown_repo_says_so_and_suggests_catalog_names(hub, tmp_path):
    with pytest.raises(InvalidInput) as info:
        _plan(_env(hub, tmp_path, VLLM_MODEL="Qwen/Qwen3-8B-Instruct-Nope"))
    assert "VLLM_MODEL" in str(info.value)


@pytest.mark.llamacpp
def test_llama_cpps_own_dry_run_reads_the_sparse_header_copy(hub, tmp_path):
    from tests.support.llama_fit import fit_params_binary

    binary = fit_params_binary()
    if not binary.exists():
        pytest.skip("llama-fit-params not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    env = _env(hub, tmp_path, PATH=f"{binary.parent}:/usr/bin:/bin")
    inputs, p = _plan(env, ("-hf", "someorg/Tiny-GGUF:Q8_0"), gpu="library_not_found.json")
    checked = pipeline.check_with_engine(inputs, p, env)
    assert any(n.startswith("llama.cpp's own dry run") for n in checked.predicted.notes), (
        checked.predicted.notes
    )
