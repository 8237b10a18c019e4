"""Backward of the grouped 3x3 convs: oneDNN, our register tiles and the default mix (CPU).

The CPU backward takes the weight gradient of grouped convs over large activations from our
tiles and everything else from oneDNN (use_own_weight_grad in csrc/cpu/conv_bn_act_cpu.h).
This benchmark is the measurement behind that rule: for every distinct grouped 3x3 shape of the
chosen models (shapes from the generator), the whole training backward (conv_bn_act_backward:
input, weight and BN gradients) with REGNET_EXT_CPU_CONV=aten (oneDNN computes both conv
gradients in one call), =tiles (ours computes both) and unset (the default: oneDNN's input
gradient, the weight gradient by the rule), interleaved, medians. The whole backward, not the
weight gradient alone: splitting oneDNN's one call into two costs time on small shapes.
It prints a table and writes <out>.json and <out>.png.
"""
import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import distinct_shapes  # noqa: E402
from common import (check_model_names, check_non_negative, check_out, check_positive, format_table,  # noqa: E402
                    machine_record, output_file, print_competing_load_warning, time_interleaved_on, write_json,
                    write_ratio_png)

import regnet_ext.ops  # noqa: E402,F401  (registers the operators)

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = {"onednn": "aten", "tiles": "tiles", "default": None}


def _set_backend(value):
    """REGNET_EXT_CPU_CONV=value (None: unset); the extension reads it on every call."""
    if value is None:
        os.environ.pop("REGNET_EXT_CPU_CONV", None)
    else:
        os.environ["REGNET_EXT_CPU_CONV"] = value


def _with_backend(value, fn):
    def run():
        _set_backend(value)
        fn()
    return run


def measure(shape, rounds, warmup):
    """Median ms per backward call for each backend on one ConvShape."""
    ops = torch.ops.regnet_ext
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape.batch, shape.c_in, shape.size, shape.size, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape.c_out, shape.group_width, 3, 3, generator=gen) * 0.1
    gamma, beta = torch.rand(shape.c_out, generator=gen) + 0.5, torch.randn(shape.c_out, generator=gen)
    args = (shape.stride, 1, shape.groups, 1e-5, True)
    y, z, mean, var = ops.conv_bn_act_train(x, w, None, gamma, beta, None, *args)
    grad_y = torch.randn(y.shape, generator=gen).contiguous(memory_format=torch.channels_last)

    def backward():  # training backward: input, weight and BN gradients
        ops.conv_bn_act_backward(grad_y, y, x, w, None, gamma, z, mean, var, *args, True, True, True, False)

    previous = os.environ.get("REGNET_EXT_CPU_CONV")
    try:
        candidates = {name: _with_backend(value, backward) for name, value in BACKENDS.items()}
        timed = time_interleaved_on(torch.device("cpu"), candidates, rounds=rounds, warmup=warmup,
                                    target_s=0.02)
    finally:
        _set_backend(previous)
    ms = {name: t["median_s"] * 1e3 for name, t in timed.items()}
    best = min(ms["onednn"], ms["tiles"])
    return {"label": f"N{shape.batch} {shape.c_in} ch gw{shape.group_width} s{shape.stride} {shape.size}px",
            "shape": {"batch": shape.batch, "channels": shape.c_in, "group_width": shape.group_width,
                      "stride": shape.stride, "size": shape.size},
            "median_ms": ms, "onednn_over_tiles": ms["onednn"] / ms["tiles"],
            "default_over_best": ms["default"] / best}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["RegNetX-400MF", "RegNetY-400MF", "RegNetY-4.0GF"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per backend first (default 2)")
    p.add_argument("--quick", action="store_true", help="RegNetY-400MF, batch 1, 2 rounds: checks the pipeline")
    p.add_argument("--out", default=None,
                   help="output stem (default results/weight_grad_cpu; --quick: results/weight_grad_cpu_quick)")
    args = p.parse_args(argv)
    check_positive(p, args, ("rounds", "batch"))
    check_non_negative(p, args, ("warmup",))
    check_model_names(p, "--models", args.models)
    if args.quick:
        args.models, args.batch, args.rounds, args.warmup = ["RegNetY-400MF"], [1], 2, 1
    if args.out is None:
        args.out = str(RESULTS / ("weight_grad_cpu_quick" if args.quick else "weight_grad_cpu"))
    check_out(p, args.out)
    return args


def main(argv=None):
    args = parse_args(argv)
    shapes = [s for s in distinct_shapes(args.models, args.batch, ["conv_bn_act"])
              if s.kernel == 3 and s.groups > 1]
    rows = []
    for i, shape in enumerate(shapes, 1):
        rows.append(measure(shape, args.rounds, args.warmup))
        print(f"[{i}/{len(shapes)}] {rows[-1]['label']}: oneDNN / tiles {rows[-1]['onednn_over_tiles']:.2f}x",
              file=sys.stderr, flush=True)
    print(format_table(["shape", "oneDNN ms", "tiles ms", "default ms", "oneDNN/tiles", "default/best"],
                       [[r["label"], f"{r['median_ms']['onednn']:.3f}", f"{r['median_ms']['tiles']:.3f}",
                         f"{r['median_ms']['default']:.3f}", f"{r['onednn_over_tiles']:.2f}",
                         f"{r['default_over_best']:.2f}"] for r in rows]))
    doc = {"benchmark": "weight_grad", "quick": args.quick, "models": args.models, "batches": args.batch,
           "rounds": args.rounds, "machine": machine_record(), "rows": rows}
    print_competing_load_warning()
    json_path = write_json(output_file(args.out, ".json"), doc)
    labels = [r["label"] for r in rows]
    png_path = write_ratio_png(
        output_file(args.out, ".png"),
        {"training backward, grouped 3x3": {"labels": labels, "series": {
            "oneDNN time / tiles time": [r["onednn_over_tiles"] for r in rows],
            "best time / default time": [1.0 / r["default_over_best"] for r in rows]}}},
        title="Grouped 3x3 backward on the CPU: oneDNN, our tiles, the default mix", xlabel="ratio")
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
