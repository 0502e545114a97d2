"""Models named by Hugging Face id: the real huggingface_hub talks to a local fake Hub.

Every test points HF_ENDPOINT at tests/support/fake_hub.py (127.0.0.1, an ephemeral port), which
serves real config.json texts, safetensors files with real headers and sparse GGUFs. Nothing is
mocked inside huggingface_hub. The measured bytes and requests are printed (pytest -s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tests.support.fake_hub import (
    AWQ_CONFIG,
    FP8_CONFIG,
    LLAMA_31_8B_CONFIG,
    QWEN3_8B_CONFIG,
    FakeHub,
    hf_tensors,
    quantized_config,
    quantized_tensors,
    safetensors_repo,
    tensor_bytes,
    write_big_header_gguf,
    write_safetensors,
    write_split_gguf,
)
from tests.support.gguf_factory import write_gguf

from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.errors import ModelError, ModelFileError
from gpu_preflight.models.gguf_file import read_gguf
from gpu_preflight.models.hub import MAX_GGUF_HEADER, HubResolution, resolve_hub_model
from gpu_preflight.models.hub_errors import (
    HubError,
    HubFileError,
    HubGatedRepo,
    HubNotAModel,
    HubOffline,
    HubQuantNotFound,
    HubRepoNotFound,
    HubUnreachable,
)
from gpu_preflight.models.hub_pick import HubRef, parse_hub_ref
from gpu_preflight.models.types import ModelArch

CATALOG = load_catalog()
QWEN3_8B = CATALOG.get("qwen3-8b").arch
LLAMA_8B = CATALOG.get("llama-3.1-8b-instruct").arch
TINY = ModelArch(
    architecture="llama",
    n_layers=2,
    hidden_size=64,
    n_heads=4,
    n_kv_heads=2,
    head_dim=16,
    intermediate_size=128,
    vocab_size=512,
    tied_embeddings=False,
    max_position_embeddings=2048,
)
TINY_CONFIG = """{
  "architectures": ["LlamaForCausalLM"],
  "hidden_size": 64,
  "intermediate_size": 128,
  "max_position_embeddings": 2048,
  "model_type": "llama",
  "num_attention_heads": 4,
  "num_hidden_layers": 2,
  "num_key_value_heads": 2,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "vocab_size": 512
}
"""
GOOD_TOKEN = "hf_fake_good_token"
FAST = 5.0  # seconds: every hostile case must fail within this


def _gguf_bytes(path: Path) -> int:
    return read_gguf(path)[1].weight_bytes


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("hubfiles")
    out: dict[str, Any] = {}
    out["qwen3-st"] = safetensors_repo(d / "qwen3", QWEN3_8B_CONFIG, hf_tensors(QWEN3_8B), 5)
    out["llama-st"] = safetensors_repo(d / "llama", LLAMA_31_8B_CONFIG, hf_tensors(LLAMA_8B), 4)
    awq = quantized_config(QWEN3_8B_CONFIG, AWQ_CONFIG, "float16")
    out["qwen3-awq"] = safetensors_repo(d / "awq", awq, quantized_tensors(QWEN3_8B, "awq"), 2)
    fp8 = quantized_config(LLAMA_31_8B_CONFIG, FP8_CONFIG, "bfloat16")
    out["llama-fp8"] = safetensors_repo(d / "fp8", fp8, quantized_tensors(LLAMA_8B, "fp8"), 2)
    g = d / "gguf"
    g.mkdir()
    out["q4"] = write_gguf(g / "Qwen3-8B-Q4_K_M.gguf", QWEN3_8B, "Q4_K_M")
    out["q8"] = write_gguf(g / "Qwen3-8B-Q8_0.gguf", QWEN3_8B, "Q8_0")
    out["single-q4"] = out["q4"]
    s = d / "split"
    s.mkdir()
    out["split"] = write_split_gguf(s, "Llama-8B-Q4_K_M", LLAMA_8B, "Q4_K_M", 3)
    out["split-whole"] = write_gguf(s / "whole.gguf", LLAMA_8B, "Q4_K_M")
    t = d / "tiny"
    t.mkdir()
    out["tiny-q8"] = write_gguf(t / "tiny-Q8_0.gguf", TINY, "Q8_0")
    out["tiny-f16"] = write_gguf(t / "tiny-F16.gguf", TINY, "F16")
    out["tiny-st"] = safetensors_repo(t / "st", TINY_CONFIG, hf_tensors(TINY), 1)
    h = d / "hostile"
    h.mkdir()
    lie = h / "lie"
    lie.mkdir()
    (lie / "config.json").write_text(TINY_CONFIG)
    out["lie-len"] = {
        "config.json": lie / "config.json",
        "model.safetensors": write_safetensors(
            lie / "model.safetensors", hf_tensors(TINY), lie_header_len=1 << 40
        ),
    }
    lie2 = h / "lie2"
    lie2.mkdir()
    (lie2 / "config.json").write_text(TINY_CONFIG)
    short = write_safetensors(lie2 / "model.safetensors", hf_tensors(TINY))
    with short.open("r+b") as fh:  # the header claims more tensor bytes than the file has
        fh.truncate(short.stat().st_size - 4096)
    out["lie-data"] = {"config.json": lie2 / "config.json", "model.safetensors": short}
    out["big-header"] = write_big_header_gguf(h / "big-Q4_K_M.gguf")
    unknown = h / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(TINY_CONFIG.replace('"llama"', '"totally_new_arch"'))
    out["unknown-arch"] = {
        "config.json": unknown / "config.json",
        "model.safetensors": write_safetensors(unknown / "model.safetensors", hf_tensors(TINY)),
    }
    (h / "README.md").write_text("# not a model\n")
    out["readme"] = h / "README.md"
    return out


@pytest.fixture(scope="module")
def hub(files: dict[str, Any]) -> Iterator[FakeHub]:
    with FakeHub(token=GOOD_TOKEN) as h:
        h.add("Qwen/Qwen3-8B", files["qwen3-st"])
        h.add("Qwen/Qwen3-8B-AWQ", files["qwen3-awq"])
        h.add("RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8", files["llama-fp8"])
        h.add("meta-llama/Llama-3.1-8B-Instruct", files["llama-st"], gated=True)
        h.add(
            "Qwen/Qwen3-8B-GGUF",
            {"Qwen3-8B-Q4_K_M.gguf": files["q4"], "Qwen3-8B-Q8_0.gguf": files["q8"]},
        )
        split = files["split"]
        h.add(
            "unsloth/Llama-8B-GGUF",
            {f"Q4_K_M/{p.name}": p for p in split} | {"README.md": files["readme"]},
        )
        h.add(
            "tiny/revs-GGUF",
            {"tiny-Q8_0.gguf": files["tiny-q8"]},
            revisions={"v1": {"tiny-F16.gguf": files["tiny-f16"]}},
        )
        h.add(
            "tiny/two-quants-GGUF",
            {"tiny-Q8_0.gguf": files["tiny-q8"], "tiny-F16.gguf": files["tiny-f16"]},
        )
        h.add("someone/not-a-model", {"README.md": files["readme"]})
        h.add("hostile/redirect-loop", files["tiny-st"], redirect_loop=True)
        h.add("hostile/slow", files["tiny-st"], slow_s=3.0)
        h.add("hostile/lying-header", files["lie-len"])
        h.add("hostile/lying-offsets", files["lie-data"])
        h.add("hostile/big-header-GGUF", {"big-Q4_K_M.gguf": files["big-header"]})
        h.add("hostile/unknown-arch", files["unknown-arch"])
        h.add("hostile/no-ranges-GGUF", {"x-Q8_0.gguf": files["q8"]}, ignore_range=True)
        h.add("hostile/not-a-GGUF", {"x-Q8_0.gguf": files["readme"]})
        h.add("mirror/no-sizes", files["tiny-st"], sizes=False)
        yield h


def _env(hub: FakeHub, tmp_path: Path, **extra: str) -> dict[str, str]:
    # An empty HF cache of the test's own: nothing from the machine running the tests leaks in.
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), **extra}


def _report(name: str, r: HubResolution) -> None:
    print(
        f"\n[hub] {name}: {r.bytes_fetched} bytes in {r.requests} requests for "
        f"{r.file_bytes} bytes of files ({r.bytes_fetched / max(r.file_bytes, 1):.5%})"
    )


# -- forms ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("Qwen/Qwen3-8B", HubRef("Qwen/Qwen3-8B")),
        ("Qwen/Qwen3-8B-GGUF:Q4_K_M", HubRef("Qwen/Qwen3-8B-GGUF", quant="Q4_K_M")),
        ("org/repo@v1.0", HubRef("org/repo", revision="v1.0")),
        ("org/repo@v1:Q8_0", HubRef("org/repo", revision="v1", quant="Q8_0")),
        ("org/repo/sub/x-Q4_K_M.gguf", HubRef("org/repo", file="sub/x-Q4_K_M.gguf")),
        ("hf.co/org/repo:Q4_0", HubRef("org/repo", quant="Q4_0")),
    ],
)
def test_forms_are_parsed(text: str, ref: HubRef) -> None:
    assert parse_hub_ref(text) == ref


@pytest.mark.parametrize(
    "text",
    [
        "qwen3-8b",
        "/models/x.gguf",
        "./x",
        "org/../etc",
        "org/repo/../../x.gguf",
        "org/repo/x.bin",
        "",
    ],
)
def test_non_hub_values_are_not_refs(text: str) -> None:
    assert parse_hub_ref(text) is None


# -- safetensors repos -> vLLM --------------------------------------------------------------------


def test_safetensors_repo_gives_exact_bytes_from_the_shard_headers(hub, tmp_path) -> None:
    r = resolve_hub_model("Qwen/Qwen3-8B", _env(hub, tmp_path), tmp_path / "headers")
    _report("Qwen/Qwen3-8B (5 shards)", r)
    art = r.spec.artifacts[0]
    assert r.engine == "vllm" and art.engine == "vllm" and art.repo == "Qwen/Qwen3-8B"
    assert art.quant == "bf16" and art.layout is not None and art.layout.exact
    assert art.weight_bytes == tensor_bytes(hf_tensors(QWEN3_8B)) == 16_381_470_720
    a, b = r.spec.arch, QWEN3_8B
    assert (a.architecture, a.n_layers, a.hidden_size, a.n_kv_heads, a.head_dim, a.vocab_size) == (
        b.architecture,
        b.n_layers,
        b.hidden_size,
        b.n_kv_heads,
        b.head_dim,
        b.vocab_size,
    )
    assert r.local_copy.is_dir() and (r.local_copy / "config.json").is_file()
    shard = r.local_copy / "model-00001-of-00005.safetensors"
    assert shard.stat().st_blocks * 512 < 1 << 20  # sparse: only the header is on disk
    assert r.requests == 1 + 2 + 5  # model info, config + index, one range per shard
    assert r.bytes_fetched < 1 << 20

    # huggingface_hub's own parser of the same headers agrees.
    from huggingface_hub import HfApi

    meta = HfApi(endpoint=hub.url).get_safetensors_metadata("Qwen/Qwen3-8B", token=False)
    assert sum(meta.parameter_count.values()) * 2 == art.weight_bytes


@pytest.mark.parametrize(
    ("repo", "key", "arch", "quant"),
    [
        ("Qwen/Qwen3-8B-AWQ", "awq", QWEN3_8B, "awq"),
        ("RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8", "fp8", LLAMA_8B, "compressed-tensors"),
    ],
)
def test_quantized_checkpoints_take_their_bytes_from_the_headers(
    hub, tmp_path, repo, key, arch, quant
) -> None:
    r = resolve_hub_model(repo, _env(hub, tmp_path), tmp_path / "h")
    _report(repo, r)
    art = r.spec.artifacts[0]
    assert art.quant == quant  # quantization_config.quant_method
    assert art.weight_bytes == tensor_bytes(quantized_tensors(arch, key))
    full = tensor_bytes(hf_tensors(arch))
    assert art.weight_bytes < 0.6 * full  # 4-/8-bit linears, 16-bit embeddings and LM head


def test_gated_repo_needs_hf_token_and_never_shows_it(hub, tmp_path) -> None:
    repo = "meta-llama/Llama-3.1-8B-Instruct"
    with pytest.raises(HubGatedRepo, match="HF_TOKEN") as exc:
        resolve_hub_model(repo, _env(hub, tmp_path), tmp_path / "h")
    assert "401" in str(exc.value) and isinstance(exc.value, ModelError)
    bad = "hf_wrong_secret_value"
    with pytest.raises(HubGatedRepo, match="no access") as exc:
        resolve_hub_model(repo, _env(hub, tmp_path, HF_TOKEN=bad), tmp_path / "h")
    assert "403" in str(exc.value) and bad not in str(exc.value)
    r = resolve_hub_model(repo, _env(hub, tmp_path, HF_TOKEN=GOOD_TOKEN), tmp_path / "h")
    _report(f"{repo} (gated, 4 shards)", r)
    assert GOOD_TOKEN not in repr(r)
    # The catalog lists this checkpoint at 16,060,522,496 bytes (the Hub's tree page).
    listed = next(a for a in CATALOG.get("llama-3.1-8b-instruct").artifacts if a.repo == repo)
    assert r.spec.artifacts[0].weight_bytes == listed.weight_bytes == 16_060_522_496
    assert hub.requests_for(repo)[-1].auth  # the token went with the file reads


def test_a_forced_engine_needs_its_kind_of_weights(hub, tmp_path) -> None:
    with pytest.raises(HubNotAModel, match="no GGUF"):
        resolve_hub_model("Qwen/Qwen3-8B", _env(hub, tmp_path), tmp_path / "h", engine="llama.cpp")
    with pytest.raises(HubNotAModel, match="not a model repo"):
        resolve_hub_model("tiny/revs-GGUF", _env(hub, tmp_path), tmp_path / "h", engine="vllm")


# -- GGUF repos -> llama.cpp ----------------------------------------------------------------------


def test_quant_tag_picks_the_gguf_file_case_insensitively(hub, files, tmp_path) -> None:
    env = _env(hub, tmp_path)
    r8 = resolve_hub_model("Qwen/Qwen3-8B-GGUF:q8_0", env, tmp_path / "h")
    _report("Qwen/Qwen3-8B-GGUF:Q8_0", r8)
    art = r8.spec.artifacts[0]
    assert r8.engine == "llama.cpp" and art.file == "Qwen3-8B-Q8_0.gguf" and art.quant == "Q8_0"
    assert art.weight_bytes == _gguf_bytes(files["q8"])
    assert r8.file_bytes == files["q8"].stat().st_size
    # Only the header travelled: a small fraction of the file, in at most two ranged reads.
    assert r8.bytes_fetched < 0.01 * r8.file_bytes
    assert r8.requests <= 3  # the model info, then one or two ranges
    assert r8.local_copy.stat().st_size == files["q8"].stat().st_size
    assert r8.local_copy.stat().st_blocks * 512 < 16 << 20
    # The sparse copy holds the file's real header bytes, at the file's real size: llama.cpp's
    # header-only tools (llama-fit-params) read it like the file itself.
    n = 8 << 20
    with r8.local_copy.open("rb") as a, files["q8"].open("rb") as b:
        assert a.read(n) == b.read(n)
    info = [x for x in hub.log if x.path == "/api/models/Qwen/Qwen3-8B-GGUF"]
    assert info and not any(x.range for x in info)
    r4 = resolve_hub_model("Qwen/Qwen3-8B-GGUF", env, tmp_path / "h")  # no tag: Q4_K_M
    assert r4.spec.artifacts[0].file == "Qwen3-8B-Q4_K_M.gguf"
    assert r4.spec.artifacts[0].weight_bytes == _gguf_bytes(files["q4"])


def test_an_unknown_quant_tag_lists_the_ones_the_repo_has(hub, tmp_path) -> None:
    with pytest.raises(HubQuantNotFound) as exc:
        resolve_hub_model("Qwen/Qwen3-8B-GGUF:Q5_K_M", _env(hub, tmp_path), tmp_path / "h")
    msg = str(exc.value)
    assert (
        "Q5_K_M" in msg and "Qwen/Qwen3-8B-GGUF:Q4_K_M" in msg and "Qwen/Qwen3-8B-GGUF:Q8_0" in msg
    )
    with pytest.raises(HubQuantNotFound, match="F16, Q8_0"):
        resolve_hub_model("tiny/two-quants-GGUF", _env(hub, tmp_path), tmp_path / "h")


def test_split_gguf_is_summed_over_its_parts(hub, files, tmp_path) -> None:
    env = _env(hub, tmp_path)
    r = resolve_hub_model("unsloth/Llama-8B-GGUF:Q4_K_M", env, tmp_path / "h")
    _report("unsloth/Llama-8B-GGUF:Q4_K_M (3 parts)", r)
    whole = _gguf_bytes(files["split-whole"])
    assert r.spec.artifacts[0].weight_bytes == whole
    assert r.files == tuple(f"Q4_K_M/{p.name}" for p in files["split"])
    assert r.file_bytes == sum(p.stat().st_size for p in files["split"])
    same = resolve_hub_model(
        f"unsloth/Llama-8B-GGUF/Q4_K_M/{files['split'][0].name}", env, tmp_path / "h2"
    )
    assert same.spec.artifacts[0].weight_bytes == whole


def test_revision_is_resolved_to_its_own_commit(hub, files, tmp_path) -> None:
    env = _env(hub, tmp_path)
    main = resolve_hub_model("tiny/revs-GGUF", env, tmp_path / "h")
    v1 = resolve_hub_model("tiny/revs-GGUF@v1", env, tmp_path / "h")
    assert main.spec.artifacts[0].file == "tiny-Q8_0.gguf"
    assert v1.spec.artifacts[0].file == "tiny-F16.gguf" and v1.spec.artifacts[0].quant == "F16"
    repo = hub.repos["tiny/revs-GGUF"]
    assert (main.revision, v1.revision) == (repo.revisions["main"].sha, repo.revisions["v1"].sha)
    pinned = resolve_hub_model(f"tiny/revs-GGUF@{v1.revision}", env, tmp_path / "h3")
    assert pinned.spec.artifacts[0].file == "tiny-F16.gguf"
    with pytest.raises(HubRepoNotFound, match="no revision"):
        resolve_hub_model("tiny/revs-GGUF@nope", env, tmp_path / "h")


# -- failures -------------------------------------------------------------------------------------


def test_missing_repo_suggests_catalog_names(hub, tmp_path) -> None:
    known = [m.id for m in CATALOG.models] + [m.hf_id for m in CATALOG.models]
    with pytest.raises(HubRepoNotFound) as exc:
        resolve_hub_model(
            "Qwen/Qwen3-8B-Instruct", _env(hub, tmp_path), tmp_path / "h", known=known
        )
    assert "Qwen/Qwen3-8B-Instruct" in str(exc.value) and "Qwen/Qwen3-8B" in str(exc.value)


def test_not_a_model_repo(hub, tmp_path) -> None:
    with pytest.raises(HubNotAModel, match=r"README\.md"):
        resolve_hub_model("someone/not-a-model", _env(hub, tmp_path), tmp_path / "h")


def test_unreachable_endpoint_says_what_to_do(tmp_path) -> None:
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    t = time.monotonic()
    with pytest.raises(HubUnreachable) as exc:
        resolve_hub_model("Qwen/Qwen3-8B", env, tmp_path / "h")
    assert time.monotonic() - t < FAST
    assert "HF_HUB_OFFLINE" in str(exc.value) and "local path" in str(exc.value)


@pytest.mark.parametrize(
    ("repo", "extra", "error", "fragment"),
    [
        ("hostile/redirect-loop", {}, HubUnreachable, "loop"),
        ("hostile/slow", {"HF_HUB_ETAG_TIMEOUT": "1"}, HubUnreachable, "HF_HUB_ETAG_TIMEOUT=1 s"),
        ("hostile/lying-header", {}, HubFileError, "declares 1099511627776 bytes"),
        ("hostile/lying-offsets", {}, HubFileError, "lying or truncated"),
        ("hostile/big-header-GGUF", {}, HubFileError, f"longer than {MAX_GGUF_HEADER}"),
        ("hostile/no-ranges-GGUF", {}, HubFileError, "refusing to download more"),
        ("hostile/not-a-GGUF", {}, HubFileError, "not a GGUF file"),
    ],
)
def test_hostile_endpoints_fail_clearly_and_fast(
    hub, tmp_path, repo, extra, error, fragment
) -> None:
    t = time.monotonic()
    with pytest.raises(error, match=fragment) as exc:
        resolve_hub_model(repo, _env(hub, tmp_path, **extra), tmp_path / "h")
    took = time.monotonic() - t
    print(f"\n[hub] {repo}: {type(exc.value).__name__} after {took:.2f} s")
    assert took < FAST and isinstance(exc.value, ModelError)
    if error is HubFileError:
        assert isinstance(exc.value, ModelFileError)


def test_file_sizes_missing_from_the_listing_are_asked_with_a_head(hub, tmp_path) -> None:
    """A mirror whose model info lists no sizes: huggingface_hub's get_hf_file_metadata (HEAD,
    X-Linked-Size) gives each one before its bounded read."""
    r = resolve_hub_model("mirror/no-sizes", _env(hub, tmp_path), tmp_path / "h")
    assert r.spec.artifacts[0].weight_bytes == tensor_bytes(hf_tensors(TINY))
    heads = [x for x in hub.requests_for("mirror/no-sizes") if x.method == "HEAD"]
    assert len(heads) == 2 and r.requests == 1 + 2 + 2  # info; HEAD and GET per file


def test_unknown_architecture_is_refused(hub, tmp_path) -> None:
    with pytest.raises(ModelError, match="totally_new_arch") as info:
        resolve_hub_model("hostile/unknown-arch", _env(hub, tmp_path), tmp_path / "h")
    assert "no config class" in str(info.value)  # vLLM could not read it either


# -- offline --------------------------------------------------------------------------------------


def test_offline_from_a_cache_huggingface_hub_populated(files, tmp_path) -> None:
    from huggingface_hub import hf_hub_download

    cache = tmp_path / "hf-cache"
    st, gg = "tiny/llama-st", "tiny/llama-GGUF"
    with FakeHub() as h:
        h.add(st, files["tiny-st"])
        h.add(gg, {"tiny-Q8_0.gguf": files["tiny-q8"], "tiny-F16.gguf": files["tiny-f16"]})
        for name in ("config.json", "model.safetensors"):
            hf_hub_download(st, name, cache_dir=cache, endpoint=h.url, token=False)
        hf_hub_download(gg, "tiny-Q8_0.gguf", cache_dir=cache, endpoint=h.url, token=False)
        url = h.url
    env = {"HF_ENDPOINT": url, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    r = resolve_hub_model(st, env, tmp_path / "h")
    assert (r.origin, r.requests, r.bytes_fetched, r.engine) == ("hf-cache", 0, 0, "vllm")
    assert r.spec.artifacts[0].weight_bytes == tensor_bytes(hf_tensors(TINY))
    g = resolve_hub_model(f"{gg}:Q8_0", env, tmp_path / "h")
    assert g.origin == "hf-cache" and g.spec.artifacts[0].weight_bytes == _gguf_bytes(
        files["tiny-q8"]
    )
    assert g.local_copy.resolve().parent.name == "blobs"  # the real downloaded file
    with pytest.raises(HubOffline, match="HF_HUB_OFFLINE") as exc:
        resolve_hub_model(f"{gg}:F16", env, tmp_path / "h")  # that quant was never downloaded
    assert "local path" in str(exc.value)


def test_a_restart_reads_the_header_cache_without_the_hub(files, tmp_path) -> None:
    headers = tmp_path / "headers"
    with FakeHub() as h:
        h.add("Qwen/Qwen3-8B-GGUF", {"Qwen3-8B-Q8_0.gguf": files["q8"]})
        first = resolve_hub_model("Qwen/Qwen3-8B-GGUF:Q8_0", _env(h, tmp_path), headers)
        url = h.url
    env = {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    again = resolve_hub_model("Qwen/Qwen3-8B-GGUF:Q8_0", env, headers)
    assert (again.origin, again.requests) == ("header-cache", 0)
    a, b = again.spec.artifacts[0], first.spec.artifacts[0]
    assert again.spec.arch == first.spec.arch and replace(a, source=None) == replace(b, source=None)
    assert again.revision == first.revision and "cached" in (a.source or "")
    assert again.file_bytes == first.file_bytes


def test_bad_settings_are_input_errors(tmp_path) -> None:
    with pytest.raises(HubError, match="HF_HUB_ETAG_TIMEOUT"):
        resolve_hub_model("a/b", {"HF_HUB_ETAG_TIMEOUT": "soon"}, tmp_path)
    with pytest.raises(HubError, match="HF_ENDPOINT"):
        resolve_hub_model("a/b", {"HF_ENDPOINT": "ftp://x"}, tmp_path)
    with pytest.raises(HubError, match="not a Hugging Face model id"):
        resolve_hub_model("qwen3-8b", {}, tmp_path)


@pytest.mark.llamacpp
def test_llama_fit_params_reads_the_sparse_copy_like_the_file(hub, files, tmp_path) -> None:
    from tests.support.llama_fit import fit_params_binary, llama_fit

    if not fit_params_binary().exists():
        pytest.skip("llama.cpp binaries not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    r = resolve_hub_model("Qwen/Qwen3-8B-GGUF:Q8_0", _env(hub, tmp_path), tmp_path / "h")

    def fit(path: Path) -> object:
        argv = ("llama-server", "--model", str(path), "--ctx-size", "4096", "-ngl", "0")
        return llama_fit(argv, env={}).host

    assert fit(r.local_copy) == fit(files["q8"])


def test_model_endpoint_and_hf_endpoint_agree_or_exit_2_naming_both():
    """llama-server downloads from MODEL_ENDPOINT first: the plan reads where it will fetch."""
    from gpu_preflight.models.hub_http import settings as _settings

    assert _settings({"MODEL_ENDPOINT": "http://127.0.0.1:9/"}).endpoint == "http://127.0.0.1:9"
    same = {"MODEL_ENDPOINT": "http://h:1", "HF_ENDPOINT": "http://h:1/"}
    assert _settings(same).endpoint == "http://h:1"
    with pytest.raises(HubError, match="HF_ENDPOINT='http://a:1' and MODEL_ENDPOINT='http://b:2'"):
        _settings({"HF_ENDPOINT": "http://a:1", "MODEL_ENDPOINT": "http://b:2"})
    with pytest.raises(HubError, match="MODEL_ENDPOINT='ftp://x'"):
        _settings({"MODEL_ENDPOINT": "ftp://x"})
