#!/usr/bin/env bash
# What the CUDA issue asks of a machine with a GPU, as one command for a lent GPU machine (it
# fits the device tool's 10-minute call): build the extension for the visible GPU against that
# machine's own torch, run the CUDA test suite, `regnet-ext selfcheck --device cuda --json`, and
# the kernel benchmark; optionally the demo, the CPU kernels' tests on that machine's CPU, and the
# model benchmark. Logs and results go to $OUT (the device tool's output folder) or ./gpu_check_out;
# TAR=1 packs them into one gpu_check.tgz there (the device tool brings back at most 8 files).
#
#   bash tools/gpu_check.sh                                   # build, test, selfcheck, quick benchmark
#   STEPS="build bench" BENCH_ARGS="--no-compile" bash tools/gpu_check.sh   # the full kernel benchmark
#   TAR=1 STEPS="build test selfcheck bench demo cputests models" BENCH_ARGS="--no-compile --dtypes float32 bfloat16" \
#     bash tools/gpu_check.sh                                 # what ran on an H200 on 2026-12-04
#
# Steps run in order, each bounded by STEP_S seconds (default 240); a failed build stops the run,
# other failures are reported and the exit status is 1 at the end. DEVICE=cpu runs the same steps
# on the CPU (a check of this script).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu_check_out}
STEPS=${STEPS:-build test selfcheck bench}
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:---quick --no-compile}
MODELS_ARGS=${MODELS_ARGS:---dtype bfloat16 --batch 64 --variants stock fused --rounds 3}
STEP_S=${STEP_S:-240}
mkdir -p "$OUT"
status=0
say() { echo "[gpu_check] $(date +%T) $*"; }
failed() { say "FAILED: $*"; status=1; }
bounded() { timeout "$STEP_S" "$@"; }
pack() {
  [ "${TAR:-0}" = 1 ] || return 0
  tar czf /tmp/gpu_check.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/gpu_check.tgz "$OUT/"
}
trap pack EXIT

for step in $STEPS; do
  case "$step" in
    build)
      if [ "$DEVICE" = cuda ]; then
        "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || { say "torch sees no GPU"; exit 1; }
        export REGNET_EXT_CUDA=1   # fail loudly rather than build without the CUDA kernels
      fi
      say "build ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
      if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip install --no-build-isolation --no-deps -e . \
          > "$OUT/build.log" 2>&1; then
        tail -40 "$OUT/build.log"
        say "build failed (log: $OUT/build.log)"
        exit 1
      fi
      "$PY" -m regnet_ext info > "$OUT/info.txt" 2>&1 || failed "regnet-ext info"
      cat "$OUT/info.txt" ;;
    test)
      say "tests (-m $DEVICE)"
      marker=$([ "$DEVICE" = cuda ] && echo cuda || echo "not cuda and not slow")
      bounded "$PY" -m pytest -q -m "$marker" tests -p no:cacheprovider -rfE > "$OUT/tests.log" 2>&1
      rc=$?
      tail -15 "$OUT/tests.log"
      [ "$rc" -eq 0 ] || failed "tests (exit $rc; log: $OUT/tests.log)" ;;
    selfcheck)
      say "selfcheck --device $DEVICE"
      bounded "$PY" -m regnet_ext selfcheck --device "$DEVICE" --json > "$OUT/selfcheck.json" 2> "$OUT/selfcheck.err"
      rc=$?
      head -c 3000 "$OUT/selfcheck.json"; echo
      cat "$OUT/selfcheck.err"
      [ "$rc" -eq 0 ] || failed "selfcheck (exit $rc)" ;;
    bench)
      say "bench_kernels.py --device $DEVICE $BENCH_ARGS"
      # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
      if bounded "$PY" benchmarks/bench_kernels.py --device "$DEVICE" $BENCH_ARGS --out "$OUT/kernels_$DEVICE" \
          > "$OUT/bench.log" 2>&1; then
        tail -15 "$OUT/bench.log"
      else
        tail -30 "$OUT/bench.log"
        failed "kernel benchmark (log: $OUT/bench.log)"
      fi ;;
    demo)
      say "regnet-ext demo --device $DEVICE"
      bounded "$PY" -m regnet_ext demo --device "$DEVICE" --out "$OUT/demo" > "$OUT/demo.log" 2>&1 \
        || failed "demo (exit $?; log: $OUT/demo.log)"
      sed -n '/== fuse/,$p' "$OUT/demo.log" | head -40 ;;
    cputests)
      # The CPU kernels chosen by this machine's CPU (AVX-512 ones where it has AVX-512).
      say "CPU kernel tests on this machine's CPU"
      bounded "$PY" -m pytest -q -m "not cuda" tests/test_conv_bn_act_narrow_groups.py tests/test_conv_bn_act_winograd.py \
        tests/test_conv_bn_act_bfloat16_rounding.py tests/test_conv_bn_act_autotune.py tests/test_conv_pair.py \
        -p no:cacheprovider -rfE \
        > "$OUT/cpu_tests.log" 2>&1 || failed "CPU kernel tests (log: $OUT/cpu_tests.log)"
      tail -5 "$OUT/cpu_tests.log" ;;
    models)
      # --resume: the JSON is written after every group, so a rerun picks up where this one stopped.
      say "bench_models.py --device $DEVICE $MODELS_ARGS"
      # shellcheck disable=SC2086  # MODELS_ARGS is a list of options
      bounded "$PY" benchmarks/bench_models.py --device "$DEVICE" $MODELS_ARGS --resume --out "$OUT/models_$DEVICE" \
        > "$OUT/models.log" 2>&1 || failed "model benchmark (log: $OUT/models.log)"
      tail -30 "$OUT/models.log" ;;
    *)
      say "unknown step $step (known: build test selfcheck bench demo cputests models)"
      exit 2 ;;
  esac
done
say "done, status $status; results in $OUT"
exit "$status"
