#!/usr/bin/env bash
# The prepared GPU check on the lent GPU machine, from the repository root, with gpu_bundle/ carried
# (`make gpu-bundle` here first; the device tool's run(carry=["gpu_bundle"])). Installs the bundle's wheels
# into a venv over the machine's own torch / transformers (nothing can be fetched there), installs ctxbench
# itself without dependencies, then runs bench/gpu/check.py. Writes $OUT (default gpu_check_out/).
set -euo pipefail
BUNDLE=${GPU_BUNDLE:-gpu_bundle}
OUT_DIR=${OUT:-gpu_check_out}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
VENV=${GPU_CHECK_VENV:-/tmp/ctxbench-gpu}
[ -d "$BUNDLE" ] || { echo "gpu-check: no $BUNDLE/ (run make gpu-bundle and carry it)" >&2; exit 2; }
if [ -z "${GPU_CHECK_NO_INSTALL:-}" ]; then  # a CPU run from the project's own venv skips this
  python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q --no-index --no-deps "$BUNDLE"/wheels/*.whl
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e .
fi
exec "$VENV/bin/python" -m ctxbench.bench.gpu.check --bundle "$BUNDLE" --device "$DEVICE" --out "$OUT_DIR" "$@"
