"""The real llama-server downloads a model named by ``-hf org/repo:QUANT`` from the local fake Hub.

What llama.cpp's ``-hf`` does (the llama.cpp that llama-cpp-python 0.3.36 vendors; .ci/llama-cpp.sh
builds it: cpp-httplib is always linked, ``LLAMA_CURL`` is a deprecated no-op there, OpenSSL adds
HTTPS), read in its source:

- the endpoint is ``MODEL_ENDPOINT``, else ``HF_ENDPOINT``, else https://huggingface.co/
  (common/common.cpp ``common_get_model_endpoint``);
- ``GET {endpoint}api/models/{repo}/refs``: the commit of ``main`` (``branches[].targetCommit``),
  written to ``refs/main``; then ``GET {endpoint}api/models/{repo}/tree/{commit}?recursive=true``:
  the files, with ``lfs.oid`` (common/hf-cache.cpp ``get_repo_commit`` / ``get_repo_files``);
- the file: the first GGUF in the listing whose path matches ``{TAG}[.-]`` case-insensitively
  (not mmproj/imatrix/mtp-/eagle3-/dflash-/dspark-, only part 1 of a split; without a tag Q4_K_M,
  then Q8_0, then the first GGUF), or exactly ``--hf-file`` (common/download.cpp
  ``find_best_model`` / ``common_download_get_hf_plan``); a repo with a root ``preset.ini`` starts
  router mode instead; an ``mmproj`` GGUF in the repo is downloaded too unless ``--no-mmproj``;
- ``HEAD`` then ``GET {endpoint}{repo}/resolve/{commit}/{path}`` into ``blobs/{lfs.oid}``, then a
  relative symlink ``snapshots/{commit}/{path}`` (common/download.cpp
  ``common_download_file_single_online``, hf-cache.cpp ``finalize_file``);
- the cache root: ``LLAMA_CACHE`` (used as the hub folder itself), ``HF_HUB_CACHE``,
  ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME``/hub, ``XDG_CACHE_HOME``/huggingface/hub,
  ``~/.cache/huggingface/hub`` (hf-cache.cpp ``get_cache_directory``): huggingface_hub's layout, so
  the planner's offline lookup finds what llama-server downloaded, and the reverse;
- offline (the endpoint unreachable): the file already in the cache is used (``get_cached_files``).

The model is a real tiny GGUF (all tensors written, as in tests/e2e/test_container.py) that
llama-server loads and answers with. Skips when the CI build of llama-server is absent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from tests.support.fake_hub import FakeHub
from tests.support.gguf_factory import write_gguf
from tests.support.llama_fit import fit_params_binary

from gpu_preflight.models.hub import resolve_hub_model
from gpu_preflight.models.types import ModelArch

SERVER = fit_params_binary().with_name("llama-server")
pytestmark = pytest.mark.skipif(
    not os.access(SERVER, os.X_OK),
    reason=f"{SERVER} is absent (built by .ci/llama-cpp.sh in make test's warm-up)",
)
REPO = "tiny-org/Tiny-GGUF"
MODEL = "Tiny-Q4_K_M.gguf"
OTHER = "Tiny-Q8_0.gguf"
# hidden 64: no row is a multiple of 256, so a Q4_K_M file keeps every matrix at Q8_0, as
# llama.cpp's quantizer falls back there (tests/support/gguf_factory.py tensor_plan).
TINY = ModelArch("llama", 2, 64, 4, 2, 16, 128, 1000, False, 2048)
CTX = 512


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny-gguf")
    readme = d / "README.md"
    readme.write_text("# Tiny\n")
    return {
        "README.md": readme,
        MODEL: write_gguf(d / MODEL, TINY, "Q4_K_M", sparse=False, name="tiny"),
        OTHER: write_gguf(d / OTHER, TINY, "Q8_0", sparse=False, name="tiny", seed=1),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(hf_home: Path, endpoint: str) -> dict[str, str]:
    # Nothing of the caller's llama.cpp / Hub settings leaks in; HOME too is the test's own.
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    return {**keep, "HOME": str(hf_home.parent), "HF_HOME": str(hf_home), "HF_ENDPOINT": endpoint}


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return bytes(r.read())


@contextmanager
def _server(args: list[str], env: Mapping[str, str], log: Path) -> Iterator[str]:
    port = _free_port()
    argv = [str(SERVER), *args, "--host", "127.0.0.1", "--port", str(port), "-c", str(CTX)]
    argv += ["-np", "1", "-t", "2", "--fit", "off", "--no-webui"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                _get(url + "/health", 2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"llama-server not healthy in 120 s:\n{log.read_text()[-4000:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serves(url: str) -> None:
    props = json.loads(_get(url + "/props"))
    assert props["default_generation_settings"]["n_ctx"] == CTX
    req = urllib.request.Request(
        url + "/completion",
        data=json.dumps({"prompt": "hello", "n_predict": 4}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.loads(r.read())["tokens_predicted"] == 4


def _blob_of(hub_cache: Path, commit: str, name: str) -> Path:
    link = hub_cache / "models--tiny-org--Tiny-GGUF" / "snapshots" / commit / name
    assert link.is_symlink(), f"{link} is not the HF-cache symlink into blobs/"
    return link.resolve()


def test_hf_tag_downloads_from_the_endpoint_into_the_hf_cache(
    repo_files: dict[str, Path], tmp_path: Path
) -> None:
    hf_home = tmp_path / "home" / "hf"
    with FakeHub() as hub:
        commit = hub.add(REPO, repo_files).revisions["main"].sha
        env = _env(hf_home, hub.url)
        with _server(["-hf", f"{REPO}:Q4_K_M"], env, tmp_path / "server.log") as url:
            _serves(url)
        asked = [(x.method, x.path) for x in hub.log]
    # refs, the recursive tree at that commit, then HEAD + GET of the one file the tag names.
    base = f"/{REPO}/resolve/{commit}"
    assert ("GET", f"/api/models/{REPO}/refs") in asked
    assert ("GET", f"/api/models/{REPO}/tree/{commit}") in asked
    assert ("HEAD", f"{base}/{MODEL}") in asked and ("GET", f"{base}/{MODEL}") in asked
    assert not any(OTHER in p or "README" in p for _, p in asked), asked
    hub_cache = hf_home / "hub"
    folder = hub_cache / "models--tiny-org--Tiny-GGUF"
    assert (folder / "refs" / "main").read_text().strip() == commit
    blob = _blob_of(hub_cache, commit, MODEL)
    assert blob.parent == folder / "blobs" and blob.read_bytes() == repo_files[MODEL].read_bytes()
    # huggingface_hub's own offline lookup finds the file llama-server wrote ...
    got = try_to_load_from_cache(REPO, MODEL, cache_dir=hub_cache)
    assert isinstance(got, str) and Path(got).resolve() == blob
    # ... and so does the planner, offline, with no request and the exact file.
    res = resolve_hub_model(
        f"{REPO}:Q4_K_M", {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}, tmp_path / "headers"
    )
    assert res.origin == "hf-cache" and res.requests == 0 and res.revision == commit
    assert res.files == (MODEL,) and res.spec.artifacts[0].file == MODEL
    assert res.file_bytes == repo_files[MODEL].stat().st_size


def test_the_plans_hf_file_form_and_a_restart_without_the_endpoint(
    repo_files: dict[str, Path], tmp_path: Path
) -> None:
    # The planner ships --hf-repo REPO --hf-file FILE (the file it planned, exactly).
    hf_home = tmp_path / "home" / "hf"
    args = ["--hf-repo", REPO, "--hf-file", MODEL]
    with FakeHub() as hub:
        commit = hub.add(REPO, repo_files).revisions["main"].sha
        endpoint = hub.url
        with _server(args, _env(hf_home, endpoint), tmp_path / "first.log") as url:
            _serves(url)
    # The endpoint is gone (a restart with no network): llama-server takes the cached file.
    with _server(args, _env(hf_home, endpoint), tmp_path / "again.log") as url:
        _serves(url)
    assert _blob_of(hf_home / "hub", commit, MODEL).read_bytes() == repo_files[MODEL].read_bytes()


def test_a_file_huggingface_hub_downloaded_is_not_downloaded_again(
    repo_files: dict[str, Path], tmp_path: Path
) -> None:
    # One volume serves both: the blob huggingface_hub names by the X-Linked-Etag is the blob
    # llama.cpp names by the tree's lfs.oid, so llama-server finds the snapshot file in place.
    hf_home = tmp_path / "home" / "hf"
    with FakeHub() as hub:
        commit = hub.add(REPO, repo_files).revisions["main"].sha
        env = _env(hf_home, hub.url)
        done = hf_hub_download(REPO, MODEL, cache_dir=hf_home / "hub", endpoint=hub.url)
        assert Path(done).resolve() == _blob_of(hf_home / "hub", commit, MODEL)
        hub.log.clear()
        with _server(["-hf", f"{REPO}:Q4_K_M"], env, tmp_path / "server.log") as url:
            _serves(url)
        files_read = [x for x in hub.log if "/resolve/" in x.path]
    assert files_read == [], [(x.method, x.path) for x in files_read]


def test_a_repo_projector_is_downloaded_unless_no_mmproj(
    repo_files: dict[str, Path], tmp_path: Path
) -> None:
    # common/arg.cpp common_models_handler_init: the server downloads a repo's mmproj GGUF with
    # the model (and loads it) unless --no-mmproj; the planner's llamacpp.no_mmproj rests on it.
    files = {**repo_files, "mmproj-Tiny-F16.gguf": repo_files[OTHER]}
    with FakeHub() as hub:
        hub.add(REPO, files)
        env = _env(tmp_path / "home" / "hf", hub.url)
        args = ["-hf", f"{REPO}:Q4_K_M", "--no-mmproj"]
        with _server(args, env, tmp_path / "no-mmproj.log") as url:
            _serves(url)
        assert not any("mmproj" in x.path for x in hub.log)
        # Without it the projector is fetched too (this one is no real projector, so the server
        # then stops: only the download is asserted).
        argv = [str(SERVER), "-hf", f"{REPO}:Q4_K_M", "--port", str(_free_port()), "-c", "512"]
        subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
        fetched = [x.path for x in hub.log if x.method == "GET" and "mmproj" in x.path]
    assert fetched and fetched[0].endswith("/mmproj-Tiny-F16.gguf")
