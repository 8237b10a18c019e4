#!/usr/bin/env bash
# The CPU extension on a CPU without AVX-512 (e.g. a laptop): builds it for x86-64-v3 (AVX2)
# into a scratch folder, checks that the AVX-512 kernels are off there, and runs the operator
# tests against that build. CI runs it after the main tests; the default build uses -march=native.
#
#   bash tools/check_portable_cpu_build.sh            # uses .venv/bin/python
#   MARCH=x86-64-v2 bash tools/check_portable_cpu_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(realpath -s "$(command -v "${PYTHON:-.venv/bin/python}")")  # absolute: the tests run elsewhere
MARCH=${MARCH:-x86-64-v3}
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

echo "[portable] building the CPU extension with -march=$MARCH"
REGNET_EXT_CUDA=0 REGNET_EXT_CPU_FLAGS="-march=$MARCH" \
  "$PY" setup.py -q build_ext --build-lib "$SCRATCH/lib" --build-temp "$SCRATCH/tmp" >"$SCRATCH/build.log" 2>&1 ||
  { tail -40 "$SCRATCH/build.log"; exit 1; }

# The package and tests beside the portable library, so that nothing imports the native build.
mkdir -p "$SCRATCH/tree"
cp -r regnet_ext tests "$SCRATCH/tree/"
rm -f "$SCRATCH"/tree/regnet_ext/_C*.so
cp "$SCRATCH"/lib/regnet_ext/_C*.so "$SCRATCH/tree/regnet_ext/"
cd "$SCRATCH/tree"

info=$(PYTHONPATH=. "$PY" -m regnet_ext info)
echo "$info" | grep -E "^cpu_(narrow_group|winograd)_kernel"
if echo "$info" | grep -qE "^cpu_(narrow_group|winograd)_kernel +yes"; then
  echo "[portable] the AVX-512 kernels are on in a -march=$MARCH build" >&2
  exit 1
fi

PYTHONPATH=. "$PY" -m pytest -q -m "not cuda" -p no:cacheprovider \
  tests/test_conv_bn_act.py tests/test_conv_bn_act_autograd.py tests/test_conv_bn_act_weight_strides.py \
  tests/test_conv_bn_act_bfloat16_rounding.py tests/test_conv_bn_act_narrow_groups.py \
  tests/test_conv_bn_act_winograd.py tests/test_squeeze_excite.py tests/test_selfcheck.py
