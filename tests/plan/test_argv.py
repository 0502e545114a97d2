"""argv builders: exact commands, and the user's own flags and LLAMA_ARG_* always win."""

from __future__ import annotations

from gpu_preflight.inputs.overrides import parse_overrides
from gpu_preflight.plan.llamacpp import llama_server_argv
from gpu_preflight.plan.settings import LlamaServerSettings, VllmSettings
from gpu_preflight.plan.types import ModelChoice
from gpu_preflight.plan.vllm import vllm_argv

GGUF = ModelChoice(
    id="qwen3-8b",
    name="Qwen3 8B",
    hf_id="Qwen/Qwen3-8B",
    repo="Qwen/Qwen3-8B-GGUF",
    file="Qwen3-8B-Q4_K_M.gguf",
    path=None,
    quant="Q4_K_M",
    weight_bytes=5_027_783_488,
    from_file=False,
)
LOCAL = ModelChoice(
    id="tiny",
    name="tiny",
    hf_id="tiny",
    repo="tiny",
    file=None,
    path="/models/tiny.gguf",
    quant="F16",
    weight_bytes=1000,
    from_file=True,
)
HF = ModelChoice(
    id="qwen3-32b",
    name="Qwen3 32B",
    hf_id="Qwen/Qwen3-32B",
    repo="Qwen/Qwen3-32B-AWQ",
    file=None,
    path=None,
    quant="awq",
    weight_bytes=19_000_000_000,
    from_file=False,
)
LS = LlamaServerSettings(
    n_ctx_total=32768,
    parallel=2,
    n_gpu_layers=-1,
    n_cpu_moe=0,
    flash_attn="on",
    cache_type_k="q8_0",
    cache_type_v="q8_0",
    n_batch=2048,
    n_ubatch=512,
    tensor_split=(),
    host="0.0.0.0",
    port=8080,
)
VS = VllmSettings(
    max_model_len=16384,
    gpu_memory_utilization=0.871,
    tensor_parallel_size=2,
    max_num_seqs=8,
    kv_cache_dtype="auto",
    quantization=None,
    host="0.0.0.0",
    port=8080,
)


def test_llama_server_argv_exact():
    argv = llama_server_argv(GGUF, LS, parse_overrides({}))
    assert argv == (
        "llama-server",
        "--hf-repo",
        "Qwen/Qwen3-8B-GGUF",
        "--hf-file",
        "Qwen3-8B-Q4_K_M.gguf",
        "--fit",
        "off",
        "--ctx-size",
        "32768",
        "--parallel",
        "2",
        "--n-gpu-layers",
        "all",
        "--flash-attn",
        "on",
        "--cache-type-k",
        "q8_0",
        "--cache-type-v",
        "q8_0",
        "--batch-size",
        "2048",
        "--ubatch-size",
        "512",
        "--cache-ram",
        "0",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
        "--alias",
        "qwen3-8b",
    )


def test_llama_server_local_file_offload_and_split():
    s = LlamaServerSettings(
        **{**LS.__dict__, "n_gpu_layers": 20, "n_cpu_moe": 8, "tensor_split": (0.7, 0.3)}
    )
    argv = llama_server_argv(LOCAL, s, parse_overrides({}))
    assert argv[1:3] == ("--model", "/models/tiny.gguf")
    assert "--hf-repo" not in argv
    i = argv.index("--n-gpu-layers")
    assert argv[i + 1] == "20"
    assert argv[argv.index("--n-cpu-moe") + 1] == "8"
    assert argv[argv.index("--tensor-split") + 1] == "0.7,0.3"


def test_user_engine_args_the_planner_reads_are_not_repeated_and_the_rest_pass_verbatim():
    o = parse_overrides({}, ["-c", "1024", "--jinja", "--chat-template-file", "t.jinja"])
    assert o.passthrough == ("--jinja", "--chat-template-file", "t.jinja")
    argv = llama_server_argv(GGUF, LS, o)
    assert "-c" not in argv and argv.count("--ctx-size") == 1
    assert argv[-3:] == ("--jinja", "--chat-template-file", "t.jinja")


def test_vllm_argv_exact():
    argv = vllm_argv(HF, VS, parse_overrides({}))
    assert argv == (
        "vllm",
        "serve",
        "Qwen/Qwen3-32B-AWQ",
        "--max-model-len",
        "16384",
        "--gpu-memory-utilization",
        "0.871",
        "--tensor-parallel-size",
        "2",
        "--max-num-seqs",
        "8",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
        "--served-model-name",
        "qwen3-32b",
    )


def test_vllm_fp8_kv_quant_and_user_args():
    s = VllmSettings(
        **{**VS.__dict__, "kv_cache_dtype": "fp8", "quantization": "awq", "tensor_parallel_size": 1}
    )
    o = parse_overrides({}, ["--gpu-memory-utilization", "0.5", "--enable-prefix-caching"])
    argv = vllm_argv(HF, s, o)
    assert "--tensor-parallel-size" not in argv
    assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"
    assert argv[argv.index("--quantization") + 1] == "awq"
    assert argv.count("--gpu-memory-utilization") == 1
    assert argv[-1:] == ("--enable-prefix-caching",)
