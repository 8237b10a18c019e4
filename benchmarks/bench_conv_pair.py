"""conv_pair_relu inside fused models on the CPU: every block with the pair, without it, and the
default (regnet_ext/nn/conv_pair.py: the pair where conv a's output is at least
MIN_INTERMEDIATE_BYTES and its input at most MAX_IN_CHANNELS wide, and where the CPU conv
autotuner is on, only where it also timed faster there), interleaved in one process.

The pair keeps conv a's output in the cache; it pays where that output would not stay there
otherwise. This benchmark is the measurement behind that rule: per block, the time with the
pair forced on against off (forward hooks inside whole-model inference, so each block sees its
input as the model leaves it), and the whole model under all three. Medians of per-round ratios.
It prints a table and writes <out>.json and <out>.png.
"""
import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (batch_resolution, check_model_names, check_non_negative, check_out,  # noqa: E402
                    check_positive, format_table, machine_record, output_file, write_json, write_ratio_png)

import regnet_ext  # noqa: E402
from regnet_ext.allocator import tune_malloc  # noqa: E402
from regnet_ext.models import regnet  # noqa: E402
from regnet_ext.nn import conv_pair  # noqa: E402
from regnet_ext.nn.modules import FusedResBottleneck  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("off", "forced", "default")
# All orders in turn: with a rotation alone "default" always ran right after "forced", whose
# allocations and cache traffic it inherited (batch 1, where both run the same code, measured
# 0.95-0.98x that way).
ORDERS = tuple(itertools.permutations(VARIANTS))


def _set_variant(name, defaults):
    conv_pair.enabled = name != "off"
    forced = name == "forced"
    conv_pair.timed = not forced
    conv_pair.MIN_INTERMEDIATE_BYTES = 0 if forced else defaults[0]
    conv_pair.MAX_IN_CHANNELS = 1 << 30 if forced else defaults[1]


def _block_timer(times, variant):
    """Forward hooks timing every fused bottleneck block into times[block][variant[0]]."""
    def pre(module, inputs):
        module._bench_input_shape = tuple(inputs[0].shape)
        module._bench_start = time.perf_counter()

    def post(module, inputs, output):
        times[module._bench_name].setdefault(variant[0], []).append(time.perf_counter() - module._bench_start)
        if variant[0] == "default":
            module._bench_rule_took_pair = module._pair.taken
    return pre, post


def measure(name, batch, resolution, rounds, warmup):
    torch.manual_seed(0)
    model = regnet_ext.fuse(regnet(name)).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    defaults = conv_pair.MIN_INTERMEDIATE_BYTES, conv_pair.MAX_IN_CHANNELS
    variant, times, blocks = [None], {}, {}
    pre, post = _block_timer(times, variant)
    for path, module in model.named_modules():
        if isinstance(module, FusedResBottleneck) and module._pair is not None:
            module._bench_name = path
            times[path], blocks[path] = {}, module
            module.register_forward_pre_hook(pre)
            module.register_forward_hook(post)
    whole = {v: [] for v in VARIANTS}
    try:
        with torch.no_grad():
            for r in range(warmup + rounds):
                order = ORDERS[r % len(ORDERS)]  # each variant after each other one in turn
                for v in order:
                    _set_variant(v, defaults)
                    variant[0] = v
                    start = time.perf_counter()
                    model(x)
                    whole[v].append(time.perf_counter() - start)
    finally:
        conv_pair.enabled = conv_pair.timed = True
        conv_pair.MIN_INTERMEDIATE_BYTES, conv_pair.MAX_IN_CHANNELS = defaults

    def ratio(a, b):  # median over timed rounds of a / b
        return statistics.median(p / q for p, q in zip(a[warmup:], b[warmup:]))

    rows = []
    for path, module in blocks.items():
        n, _, h, w = module._bench_input_shape
        a_out = module.part("a").conv_module.out_channels
        t = times[path]
        rows.append({"block": path, "input": list(module._bench_input_shape),
                     "intermediate_mb": n * a_out * h * w * 4 / 2**20,
                     "off_ms": statistics.median(t["off"][warmup:]) * 1e3,
                     "forced_ms": statistics.median(t["forced"][warmup:]) * 1e3,
                     "default_ms": statistics.median(t["default"][warmup:]) * 1e3,
                     "forced_speedup": ratio(t["off"], t["forced"]), "rule_takes_pair": module._bench_rule_took_pair})
    return {"model": name, "batch": batch, "resolution": resolution, "blocks": rows,
            "whole_ms": {v: statistics.median(whole[v][warmup:]) * 1e3 for v in VARIANTS},
            "whole_speedup": {"forced": ratio(whole["off"], whole["forced"]),
                              "default": ratio(whole["off"], whole["default"])}}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["RegNetY-400MF", "RegNetX-400MF"])
    p.add_argument("--configs", nargs="+", type=batch_resolution, default=[(8, 224), (32, 128), (1, 224)],
                   help="BATCHxRESOLUTION (default 8x224 32x128 1x224)")
    p.add_argument("--rounds", type=int, default=18, help="interleaved rounds (default 18: every order of the three three times)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--quick", action="store_true", help="RegNetY-400MF, 2x64, 2 rounds: checks the pipeline")
    p.add_argument("--no-tune-malloc", action="store_true",
                   help="keep glibc's malloc settings (default: regnet_ext.allocator.tune_malloc(use_mmap=False))")
    p.add_argument("--out", default=None,
                   help="output stem (default results/conv_pair_cpu; --quick: results/conv_pair_cpu_quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.configs, args.rounds, args.warmup = ["RegNetY-400MF"], [(2, 64)], 2, 1
    check_positive(p, args, ("rounds",))
    check_non_negative(p, args, ("warmup",))
    check_model_names(p, "--models", args.models)
    if args.out is None:
        args.out = str(RESULTS / ("conv_pair_cpu_quick" if args.quick else "conv_pair_cpu"))
    check_out(p, args.out)
    return args


def main(argv=None):
    args = parse_args(argv)
    malloc_tuned = False if args.no_tune_malloc else tune_malloc(use_mmap=False)
    results = []
    for name in args.models:
        for batch, resolution in args.configs:
            results.append(measure(name, batch, resolution, args.rounds, args.warmup))
            r = results[-1]
            print(f"{name} {batch}x{resolution}: whole model, pair by the rule {r['whole_speedup']['default']:.3f}x, "
                  f"in every block {r['whole_speedup']['forced']:.3f}x", file=sys.stderr, flush=True)
    rows = [[f"{r['model']} {r['batch']}x{r['resolution']}", b["block"], f"{b['intermediate_mb']:.1f}",
             f"{b['off_ms']:.3f}", f"{b['forced_ms']:.3f}", f"{b['forced_speedup']:.2f}",
             "yes" if b["rule_takes_pair"] else "no"]
            for r in results for b in r["blocks"]]
    print(format_table(["model", "block", "a out MB", "off ms", "pair ms", "off/pair", "rule"], rows))
    print(format_table(["model", "off ms", "rule ms", "all ms", "off/rule", "off/all"],
                       [[f"{r['model']} {r['batch']}x{r['resolution']}", f"{r['whole_ms']['off']:.2f}",
                         f"{r['whole_ms']['default']:.2f}", f"{r['whole_ms']['forced']:.2f}",
                         f"{r['whole_speedup']['default']:.3f}", f"{r['whole_speedup']['forced']:.3f}"]
                        for r in results]))
    doc = {"benchmark": "conv_pair", "quick": args.quick, "models": args.models,
           "configs": [list(c) for c in args.configs], "rounds": args.rounds, "warmup": args.warmup,
           "min_intermediate_bytes": conv_pair.MIN_INTERMEDIATE_BYTES, "max_in_channels": conv_pair.MAX_IN_CHANNELS,
           "malloc_tuned": malloc_tuned,
           "machine": machine_record(), "results": results}
    json_path = write_json(output_file(args.out, ".json"), doc)
    png_path = write_ratio_png(
        output_file(args.out, ".png"),
        {"per block: time without the pair / with it": {
            "labels": [f"{r['model']} {r['batch']}x{r['resolution']} {b['block']} ({b['intermediate_mb']:.1f} MB)"
                       for r in results for b in r["blocks"]],
            "series": {"off / pair": [b["forced_speedup"] for r in results for b in r["blocks"]]}},
         "whole model: time without the pair / with it": {
            "labels": [f"{r['model']} {r['batch']}x{r['resolution']}" for r in results],
            "series": {"by the size rule": [r["whole_speedup"]["default"] for r in results],
                       "in every block": [r["whole_speedup"]["forced"] for r in results]}}},
        title="conv_pair_relu in fused RegNets (CPU inference)")
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
