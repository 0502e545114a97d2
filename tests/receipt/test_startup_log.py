"""llama.cpp's per-buffer start-up lines, as llama-server 0.3.36 prints them at -lv 4 (captured
here from the real binary) and as CUDA logs in llama.cpp's issues print them."""

from __future__ import annotations

from gpu_preflight.receipt.startup_log import device_of, parse

MIB = 2**20

# Captured from /var/cache/gpu-preflight/llama.cpp-0.3.36/bin/llama-server -lv 4 on a tiny model.
CPU_LOG = """\
0.00.018.994 I load_tensors:   CPU_Mapped model buffer size =     0.39 MiB
0.00.019.279 I llama_context:        CPU  output buffer size =     0.02 MiB
0.00.019.365 I llama_kv_cache:        CPU KV buffer size =     0.50 MiB
0.00.020.609 I sched_reserve:        CPU compute buffer size =     3.01 MiB
"""
# The shape of a CUDA start-up with a split model (llama.cpp issue logs print these lines).
CUDA_LOG = """\
load_tensors: offloaded 33/33 layers to GPU
load_tensors:        CUDA0 model buffer size =  2479.24 MiB
load_tensors:        CUDA1 model buffer size =  2135.56 MiB
load_tensors:   CPU_Mapped model buffer size =   281.81 MiB
llama_kv_cache:      CUDA0 KV buffer size =   544.00 MiB
llama_kv_cache:      CUDA1 KV buffer size =   480.00 MiB
llama_context:  CUDA_Host  output buffer size =     0.49 MiB
llama_context:      CUDA0 compute buffer size =   296.01 MiB
llama_context:      CUDA1 compute buffer size =   296.02 MiB
llama_context:  CUDA_Host compute buffer size =    24.02 MiB
llama_memory_recurrent:      CUDA0 RS buffer size =    12.00 MiB
"""


def test_cpu_buffers_from_the_real_binary():
    got = parse(CPU_LOG)
    assert got.lines == 4
    cpu = got.by_device["CPU"]
    assert cpu["weights"] == round(0.39 * MIB) and cpu["kv_cache"] == MIB // 2
    assert cpu["compute"] == round(3.01 * MIB) and cpu["output"] == round(0.02 * MIB)


def test_cuda_buffers_are_per_device_and_host_buffers_are_host_ram():
    got = parse(CUDA_LOG).by_device
    assert got["CUDA0"] == {
        "weights": round(2479.24 * MIB),
        "kv_cache": 544 * MIB,
        "compute": round(296.01 * MIB),
        "recurrent_state": 12 * MIB,
    }
    assert got["CUDA1"]["weights"] == round(2135.56 * MIB)
    assert got["CPU"] == {
        "weights": round(281.81 * MIB),
        "output": round(0.49 * MIB),
        "compute": round(24.02 * MIB),
    }


def test_names():
    assert device_of("CUDA12") == "CUDA12" and device_of("CUDA_Host") == "CPU"
    assert device_of("CPU_REPACK") == "CPU" and device_of("Vulkan1") == "Vulkan1"


def test_garbage_is_no_lines():
    assert parse("\x00\xff nothing here = 12 MiB\n" * 100).lines == 0
