#!/usr/bin/env bash
# The CPU extension on a CPU without AVX-512 (e.g. a laptop): builds it for x86-64-v3 (AVX2)
# into a scratch folder, checks which of our kernels it has (the narrow-group conv's AVX2 variant
# where the target has AVX2+FMA; never the AVX-512 Winograd conv) and that it compiled without
# warnings, and runs the operator tests against that build. CI runs it after the main tests; the
# default build uses -march=native.
#
#   bash tools/check_portable_cpu_build.sh            # uses .venv/bin/python
#   MARCH=x86-64-v2 bash tools/check_portable_cpu_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(realpath -s "$(command -v "${PYTHON:-.venv/bin/python}")")  # absolute: the tests run elsewhere
MARCH=${MARCH:-x86-64-v3}
SCRATCH=$(mktemp -d)
# setup.py records the build's settings in the checkout's regnet_ext/_build_config.py: the
# portable build's go to the scratch tree only, the checkout's (its native build's) are put back.
CONFIG="$PWD/regnet_ext/_build_config.py"
if [ -f "$CONFIG" ]; then cp -p "$CONFIG" "$SCRATCH/build_config.saved"; fi
restore_config() {
  if [ -f "$SCRATCH/build_config.saved" ]; then cp -p "$SCRATCH/build_config.saved" "$CONFIG"; else rm -f "$CONFIG"; fi
}
trap 'restore_config; rm -rf "$SCRATCH"' EXIT

echo "[portable] building the CPU extension with -march=$MARCH"
REGNET_EXT_CUDA=0 REGNET_EXT_CPU_FLAGS="-march=$MARCH" \
  "$PY" setup.py -q build_ext --build-lib "$SCRATCH/lib" --build-temp "$SCRATCH/tmp" >"$SCRATCH/build.log" 2>&1 ||
  { tail -40 "$SCRATCH/build.log"; exit 1; }
# A laptop's build shows its warnings to whoever builds it (tests/test_build.py checks the native one).
if grep -q "warning:" "$SCRATCH/build.log"; then
  grep "warning:" "$SCRATCH/build.log" | head -20
  echo "[portable] the -march=$MARCH build printed $(grep -c "warning:" "$SCRATCH/build.log") compiler warnings" >&2
  exit 1
fi

# The package and tests beside the portable library, so that nothing imports the native build.
mkdir -p "$SCRATCH/tree"
cp -r regnet_ext tests pyproject.toml "$SCRATCH/tree/"  # pyproject.toml: pytest's markers
rm -f "$SCRATCH"/tree/regnet_ext/_C*.so
cp "$SCRATCH"/lib/regnet_ext/_C*.so "$SCRATCH/tree/regnet_ext/"
restore_config
cd "$SCRATCH/tree"

defines=$(${CXX:-c++} -march="$MARCH" -dM -E - </dev/null)
target_has() { grep -q "#define $1 " <<<"$defines"; }
if target_has __AVX512F__; then
  echo "[portable] -march=$MARCH has AVX-512: not a portable target" >&2
  exit 1
fi
narrow=no
if target_has __AVX2__ && target_has __FMA__; then narrow=yes; fi
info=$(PYTHONPATH=. "$PY" -m regnet_ext info)
echo "$info" | grep -E "^cpu_(narrow_group|winograd)_kernel|^cpu_flags_at_build"
if ! echo "$info" | grep -qE "^cpu_flags_at_build +-march=$MARCH\b"; then
  echo "[portable] info should report the build's flags, -march=$MARCH" >&2
  exit 1
fi
if ! echo "$info" | grep -qE "^cpu_narrow_group_kernel +$narrow\b" ||
   ! echo "$info" | grep -qE "^cpu_winograd_kernel +no\b"; then
  echo "[portable] a -march=$MARCH build should have narrow_group_kernel=$narrow, winograd_kernel=no" >&2
  exit 1
fi

PYTHONPATH=. "$PY" -m pytest -q -m "not cuda" -p no:cacheprovider \
  tests/test_conv_bn_act.py tests/test_conv_bn_act_autograd.py tests/test_conv_bn_act_weight_strides.py \
  tests/test_conv_bn_act_bfloat16_rounding.py tests/test_conv_bn_act_narrow_groups.py \
  tests/test_conv_bn_act_winograd.py tests/test_conv_bn_act_autotune.py tests/test_squeeze_excite.py \
  tests/test_selfcheck.py tests/test_fuse_packed_linear.py tests/test_conv_pair.py
