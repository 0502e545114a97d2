#!/usr/bin/env bash
# Build llama-server and llama-fit-params with llama.cpp's Vulkan backend from the same
# llama-cpp-python sdist as .ci/llama-cpp.sh, and cache them outside the repository. On a
# machine without a GPU they run on Mesa's software Vulkan driver (lavapipe, from
# mesa-vulkan-drivers; see .ci/system-deps.sh), a device that is not the CPU backend: the
# tests use it for layer/output placement, tensor split and expert offload as llama.cpp decides.
# Prints the directory holding the binaries. Re-running with a warm cache costs nothing.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${GPU_PREFLIGHT_CACHE:-/var/cache/gpu-preflight}/llama.cpp-vulkan-${VERSION}"
BIN="$CACHE/bin"
if [[ -x "$BIN/llama-server" && -x "$BIN/llama-fit-params" ]]; then
  echo "$BIN"; exit 0
fi
mkdir -p "$CACHE"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: \
  -d "$work" "llama-cpp-python==${VERSION}" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
# Debian 12's Vulkan headers (1.3.239) lack vk::LayerSettingEXT (VK_EXT_layer_settings, 1.3.268).
# ggml-vulkan.cpp (ggml_vk_instance_init) only uses it to switch on the validation layer's
# best-practice checks, and only when built with GGML_VULKAN_VALIDATE
# (ggml_vk_instance_layer_settings_available returns false otherwise), so the instance is
# created without that pNext. Fails loudly if the source no longer has the expected text.
python3 - "$src/ggml/src/ggml-vulkan/ggml-vulkan.cpp" <<'EOF'
import re
import sys

path = sys.argv[1]
text = open(path, encoding="utf-8").read()
pattern = re.compile(
    r"    VkBool32 enable_best_practice = layer_settings;\n"
    r"    std::vector<vk::LayerSettingEXT> settings = \{.*?\};\n"
    r"    vk::LayerSettingsCreateInfoEXT layer_setting_info\(settings\);\n"
    r"    vk::InstanceCreateInfo instance_create_info\(vk::InstanceCreateFlags\{\}, &app_info, "
    r"layers, extensions, &layer_setting_info\);\n",
    re.S,
)
patched, count = pattern.subn(
    "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, "
    "layers, extensions);\n",
    text,
)
if count != 1:
    sys.exit(f"llama-cpp-vulkan: expected one layer-settings block in {path}, found {count}")
if "LayerSetting" in patched:
    sys.exit(f"llama-cpp-vulkan: {path} still uses vk::LayerSetting* after the patch")
open(path, "w", encoding="utf-8").write(patched)
EOF
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_VULKAN=ON -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >&2
cmake --build "$work/build" -j"$(nproc)" --target llama-server llama-fit-params >&2
mkdir -p "$BIN.tmp"
cp "$work/build/bin/llama-server" "$work/build/bin/llama-fit-params" "$BIN.tmp/"
rm -rf "$BIN"; mv "$BIN.tmp" "$BIN"
echo "$BIN"
