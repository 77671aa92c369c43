#!/usr/bin/env bash
# nbsched's checks on a machine with an NVIDIA GPU: NVML against nvidia-smi, jobs'
# memory attributed with their peaks, memory requests sharing a GPU, and the monitor
# pass's cost with per-process readings.  Needs no network: Python 3.10+, nbsched's
# own dependencies and nvidia-ml-py (carry a virtual environment where they are not
# installed), and the NVIDIA driver.  Run from anywhere:
#
#     tests/gpu/check_on_gpu.sh            # -v, -x, ... go on to pytest
#
# Without an NVIDIA driver every test is skipped, with the reason.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"

echo "== machine"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used --format=csv \
    || echo "(nvidia-smi failed: no NVIDIA driver?)"
"$python" - <<'PY' || exit 2
import importlib, sys
missing = [m for m in ("pynvml", "psutil", "pandas", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (pip install -e '.[test]')")
import nbsched
print("nbsched from", nbsched.__file__)
PY

echo "== pytest -m gpu"
"$python" -m pytest -m gpu -p no:cacheprovider -o addopts="" -rs tests/gpu "$@"
status=$?

echo "== monitor pass with per-process readings (benchmarks/bench_memory.py --real)"
"$python" benchmarks/bench_memory.py --real || status=1
exit $status
