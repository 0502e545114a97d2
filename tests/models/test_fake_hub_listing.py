"""The fake Hub's refs and tree routes (what llama.cpp's ``-hf`` downloader asks first), read by
the real huggingface_hub client: the shapes its parsers accept are the shapes the Hub sends."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.hf_api import RepoFile, RepoFolder
from tests.support.fake_hub import FakeHub


def _files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (tmp_path / "b.gguf").write_bytes(b"GGUF" + b"\1" * 28)
    return {"Q4_K_M/a-Q4_K_M.gguf": tmp_path / "a.gguf", "b-Q8_0.gguf": tmp_path / "b.gguf"}


def test_refs_and_recursive_tree_as_huggingface_hub_reads_them(tmp_path: Path) -> None:
    with FakeHub() as hub:
        repo = hub.add("org/Tree-GGUF", _files(tmp_path), revisions={"v1": {}})
        api = HfApi(endpoint=hub.url)
        refs = api.list_repo_refs("org/Tree-GGUF")
        assert [(b.name, b.target_commit) for b in refs.branches] == [
            ("main", repo.revisions["main"].sha)
        ]
        assert [t.name for t in refs.tags] == ["v1"]
        tree = list(api.list_repo_tree("org/Tree-GGUF", recursive=True))
        top = list(api.list_repo_tree("org/Tree-GGUF"))
        inside = list(api.list_repo_tree("org/Tree-GGUF", path_in_repo="Q4_K_M"))
        done = hf_hub_download(
            "org/Tree-GGUF", "b-Q8_0.gguf", cache_dir=tmp_path / "c", endpoint=hub.url
        )
    # huggingface_hub names the blob by the X-Linked-Etag; llama.cpp by the tree's lfs.oid.
    blob = Path(done).resolve().name
    files = {f.path: f for f in tree if isinstance(f, RepoFile)}
    assert set(files) == {"Q4_K_M/a-Q4_K_M.gguf", "b-Q8_0.gguf"}
    assert [f.path for f in tree if isinstance(f, RepoFolder)] == ["Q4_K_M"]
    assert files["b-Q8_0.gguf"].size == 32 and files["Q4_K_M/a-Q4_K_M.gguf"].size == 64
    lfs = files["b-Q8_0.gguf"].lfs
    assert lfs is not None and lfs.size == 32 and lfs.sha256 == blob  # one blob for both
    assert {type(x).__name__: x.path for x in top} == {
        "RepoFolder": "Q4_K_M",
        "RepoFile": "b-Q8_0.gguf",
    }
    assert [x.path for x in inside] == ["Q4_K_M/a-Q4_K_M.gguf"]
