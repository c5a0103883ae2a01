#!/usr/bin/env bash
# Install onnxruntime-gpu into a separate virtual environment and run benchmarks/gpu.py on CUDA.
#
#   benchmarks/gpu.sh [--venv DIR] [python -m benchmarks.gpu options]
#
# Needs an NVIDIA GPU with a driver, Python 3.10 or newer and a path to PyPI. The CUDA and
# cuDNN libraries come from the nvidia-* wheels that onnxruntime-gpu's [cuda,cudnn] extras
# install; their lib folders go on LD_LIBRARY_PATH, so the server subprocess finds them too.
set -euo pipefail

cd "$(dirname "$0")/.."
venv=.venv-gpu
if [[ "${1:-}" == "--venv" ]]; then
    venv=$2
    shift 2
fi
python=${PYTHON:-python3}

if ! command -v nvidia-smi >/dev/null; then
    echo "error: nvidia-smi not found; this script needs an NVIDIA GPU and its driver" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e .
# The CPU build that `pip install -e .` pulls in and onnxruntime-gpu both install the
# `onnxruntime` module, so the CPU build has to go before the GPU build is installed.
"$venv/bin/python" -m pip uninstall --quiet --yes onnxruntime
"$venv/bin/python" -m pip install --quiet 'onnxruntime-gpu[cuda,cudnn]'

nvidia_libs=$("$venv/bin/python" - <<'PY'
import glob, os, sysconfig
site = sysconfig.get_paths()["purelib"]
print(":".join(sorted(path for path in glob.glob(os.path.join(site, "nvidia", "*", "lib")) if os.path.isdir(path))))
PY
)
export LD_LIBRARY_PATH="${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

exec "$venv/bin/python" -m benchmarks.gpu --provider cuda "$@"
