# gpu-preflight: probe the GPU machine, plan, then become the inference server (or refuse, exit 3).
#
#   docker build -t gpu-preflight .                       # target `both`: vLLM + llama.cpp
#   docker build --target llamacpp -t gpu-preflight:llamacpp .
#   docker build --target vllm -t gpu-preflight:vllm .
#   docker run --gpus all -p 8080:8080 -v preflight:/var/lib/gpu-preflight gpu-preflight
#
# The base images are build arguments, so the CI end-to-end test can build every target on a
# Debian base it made itself (no registry there), with llama-server in LLAMACPP_DIR.
ARG VLLM_BASE=vllm/vllm-openai:v0.32.0
# The "full" image: llama-server and llama.cpp's tools, among them llama-fit-params, which `run`
# uses for llama.cpp's own dry run of the planned command (the "server" image has no tools).
ARG LLAMACPP_BASE=ghcr.io/ggml-org/llama.cpp:full-cuda
ARG LLAMACPP_DIR=/app

# ---- llama-server, llama-fit-params and their libraries, from the official llama.cpp CUDA image -
FROM ${LLAMACPP_BASE} AS llamacpp-bin
ARG LLAMACPP_DIR
RUN mkdir -p /opt/llama.cpp && cp -a "${LLAMACPP_DIR}"/. /opt/llama.cpp/ && test -x /opt/llama.cpp/llama-server

# ---- what every target shares: the package in its own venv, fio, a non-root user --------------
FROM ${LLAMACPP_BASE} AS llamacpp
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv fio ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=llamacpp-bin /opt/llama.cpp /opt/llama.cpp
COPY pyproject.toml README.md /src/
COPY entrypoint /src/entrypoint
COPY schemas /src/schemas
# hadolint ignore=DL3013
RUN python3 -m venv /opt/gpu-preflight \
 && /opt/gpu-preflight/bin/pip install --no-cache-dir /src \
 && ln -s /opt/gpu-preflight/bin/gpu-preflight /usr/local/bin/gpu-preflight \
 && rm -rf /src \
 && (useradd --system --uid 10001 --create-home --home-dir /home/preflight preflight || true) \
 && mkdir -p /var/lib/gpu-preflight /models /bench /home/preflight/.cache/huggingface \
 && chown -R 10001:10001 /var/lib/gpu-preflight /models /bench /home/preflight
# CUDA_DEVICE_ORDER=PCI_BUS_ID: CUDA then numbers GPUs in NVML's (bus) order, so the plan's
# CUDA0, CUDA1 are the engine's on mixed cards too (probe/visible.py).
ENV PATH=/opt/llama.cpp:/opt/gpu-preflight/bin:$PATH \
    LD_LIBRARY_PATH=/opt/llama.cpp \
    HF_HOME=/home/preflight/.cache/huggingface \
    PREFLIGHT_PROFILE_DIR=/var/lib/gpu-preflight \
    PREFLIGHT_BENCH_DIR=/bench \
    NVIDIA_VISIBLE_DEVICES=all \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.title="gpu-preflight" \
      org.opencontainers.image.description="Probes the GPU machine, plans the LLM it can serve, then becomes llama-server or vLLM - or refuses before an OOM" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
VOLUME ["/var/lib/gpu-preflight", "/models", "/bench", "/home/preflight/.cache/huggingface"]
EXPOSE 8080
USER 10001
WORKDIR /home/preflight
# Both engines answer GET /health once the model is loaded; loading a large model takes minutes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
  CMD ["python3", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PREFLIGHT_PORT', '8080'), timeout=8)"]
ENTRYPOINT ["gpu-preflight", "run", "--"]

# ---- vLLM only ---------------------------------------------------------------------------------
FROM ${VLLM_BASE} AS vllm
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv fio ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY entrypoint /src/entrypoint
COPY schemas /src/schemas
# hadolint ignore=DL3013
RUN python3 -m venv /opt/gpu-preflight \
 && /opt/gpu-preflight/bin/pip install --no-cache-dir /src \
 && ln -s /opt/gpu-preflight/bin/gpu-preflight /usr/local/bin/gpu-preflight \
 && rm -rf /src \
 && (useradd --system --uid 10001 --create-home --home-dir /home/preflight preflight || true) \
 && mkdir -p /var/lib/gpu-preflight /models /bench /home/preflight/.cache/huggingface \
 && chown -R 10001:10001 /var/lib/gpu-preflight /models /bench /home/preflight
# CUDA_DEVICE_ORDER=PCI_BUS_ID: CUDA then numbers GPUs in NVML's (bus) order, so the plan's
# CUDA0, CUDA1 are the engine's on mixed cards too (probe/visible.py).
ENV HF_HOME=/home/preflight/.cache/huggingface \
    PREFLIGHT_PROFILE_DIR=/var/lib/gpu-preflight \
    PREFLIGHT_BENCH_DIR=/bench \
    NVIDIA_VISIBLE_DEVICES=all \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.title="gpu-preflight (vLLM)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
VOLUME ["/var/lib/gpu-preflight", "/models", "/bench", "/home/preflight/.cache/huggingface"]
EXPOSE 8080
USER 10001
WORKDIR /home/preflight
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
  CMD ["python3", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PREFLIGHT_PORT', '8080'), timeout=8)"]
ENTRYPOINT ["gpu-preflight", "run", "--"]

# ---- both engines (default): the automatic engine choice works in one image --------------------
FROM vllm AS both
USER 0
COPY --from=llamacpp-bin /opt/llama.cpp /opt/llama.cpp
ENV PATH=/opt/llama.cpp:$PATH \
    LD_LIBRARY_PATH=/opt/llama.cpp
LABEL org.opencontainers.image.title="gpu-preflight (vLLM + llama.cpp)"
USER 10001
