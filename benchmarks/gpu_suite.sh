#!/usr/bin/env bash
# The device command of benchmarks/gpu_suite.py (see its docstring and README.md, "GPU"):
#   bash benchmarks/gpu_suite.sh [OUT_DIR] [more gpu_suite.py options]
# On a machine with torch but without this project or pytorch-ood installed: the wheels in .whl/
# (pytorch-ood; `pip download` them here first) go to /tmp/site, and /tmp/site plus this
# checkout go on PYTHONPATH; nothing is installed into the machine's Python.
# DEVICE=cpu bash benchmarks/gpu_suite.sh /tmp/out --smoke runs the toy version on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${1:-${OUT:-benchmarks/results/gpu}}"
shift || true
path="$PWD"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    path="/tmp/site:$path"
fi
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_suite.py --device "${DEVICE:-cuda}" --out "$out_dir" "$@"
