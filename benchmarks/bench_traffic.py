"""Analytic traffic per block shape: activation passes and the H100 roofline time they imply.

For every block shape of the chosen RegNets (the first block of each stage, and its identity
blocks) at batch 128, bf16, prints the passes and bytes of stock eager, torch.compile, our
operators called one by one (ours_ops) and the fused target (ours), in inference and training, and the roofline time on a named GPU (nominal
ceilings: H100 3.0 TB/s, 800 TFLOP/s bf16 dense). No GPU is needed: this is the model, not a
measurement. Writes benchmarks/results/traffic_<device>.json.

    .venv/bin/python benchmarks/bench_traffic.py [--models RegNetY-4.0GF RegNetY-400MF]
        [--batch 128] [--resolution 224] [--device h100] [--out PATH]
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py

from common import check_model_names, check_out, check_positive  # noqa: E402
from regnet_ext.models import regnet_spec  # noqa: E402
from regnet_ext.models.complexity import per_block_complexity  # noqa: E402
from regnet_ext.profiling import NOMINAL, block_traffic, model_traffic  # noqa: E402

SCHEDULES = ("eager", "compile", "ours_ops", "ours")
RESULTS = Path(__file__).resolve().parent / "results"


def block_shapes(spec, resolution):
    """[(BlockSpec, (h, w) input, number of blocks with this shape)] in network order."""
    shapes = {}
    for block, hw, _ in per_block_complexity(spec, resolution):
        key = (block.w_in, block.w_out, block.stride, block.group_width, block.se_width, hw)
        if key in shapes:
            shapes[key][2] += 1
        else:
            shapes[key] = [block, hw, 1]
    return [tuple(v) for v in shapes.values()]


def measure_block(block, hw, batch, dtype, ceiling):
    row = {}
    for training in (False, True):
        mode = "train" if training else "eval"
        for name in SCHEDULES:
            t = block_traffic(block, batch, hw, schedule=name, training=training, dtype=dtype)
            fwd = t.total("forward")
            row[f"{mode}_{name}"] = dict(
                passes_forward=fwd.passes, bytes_forward=fwd.bytes, flops_forward=fwd.flops,
                kernels_forward=fwd.kernels,
                time_forward_us=1e6 * t.roofline_seconds(ceiling, "forward"))
            row[f"{mode}_{name}"]["kernels"] = [
                dict(ops="+".join(op.split("/", 1)[1] for op in k.ops), phase=k.phase,
                     passes=ks.passes, bytes=ks.bytes,
                     time_us=round(1e6 * ks.roofline_seconds(ceiling), 3))
                for k, ks in t.per_kernel()]
            if training:
                bwd = t.total("backward")
                row[f"{mode}_{name}"].update(
                    passes_backward=bwd.passes, bytes_backward=bwd.bytes,
                    time_backward_us=1e6 * t.roofline_seconds(ceiling, "backward"))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["RegNetY-4.0GF", "RegNetY-400MF"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--device", default="h100", choices=sorted(NOMINAL))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    check_positive(parser, args, ("batch", "resolution"))
    check_model_names(parser, "--models", args.models)
    if args.out:
        check_out(parser, args.out)
    dtype = getattr(torch, args.dtype)
    ceiling = NOMINAL[args.device]
    doc = dict(device=ceiling.name, bandwidth_bytes_per_s=ceiling.bytes_per_s,
               flops_per_s=ceiling.flops_per_s, batch=args.batch, resolution=args.resolution,
               dtype=args.dtype, schedules=list(SCHEDULES), models=[],
               note="analytic: roofline time = sum over kernels of max(flops/peak, bytes/bandwidth)")
    for name in args.models:
        spec = regnet_spec(name)
        print(f"\n{spec.name}  batch {args.batch}  {args.resolution}px  {args.dtype}  "
              f"roofline on {ceiling.name}")
        print(f"{'block (w_in>w_out s g, input)':34} {'n':>2}  {'passes e/c/op/o':>15}  "
              f"{'train fwd e/op/o':>16}  {'eager us':>9} {'ops us':>8} {'ours us':>8} "
              f"{'x':>5}  {'train step e/op/o us':>24}")
        blocks = []
        for block, hw, count in block_shapes(spec, args.resolution):
            row = measure_block(block, hw, args.batch, dtype, ceiling)
            label = (f"s{block.stage + 1} {block.w_in}>{block.w_out} s{block.stride} "
                     f"g{block.group_width} {hw[0]}x{hw[1]}")
            e, c, p, o = (row[f"eval_{s}"] for s in SCHEDULES)
            te, tp, to = row["train_eager"], row["train_ours_ops"], row["train_ours"]
            steps = [t["time_forward_us"] + t["time_backward_us"] for t in (te, tp, to)]
            print(f"{label:34} {count:>2}  {e['passes_forward']:>4}/{c['passes_forward']:>3}/"
                  f"{p['passes_forward']:>3}/{o['passes_forward']:>3}  "
                  f"{te['passes_forward']:>8}/{tp['passes_forward']:>3}/{to['passes_forward']:>3}  "
                  f"{e['time_forward_us']:>9.1f} {p['time_forward_us']:>8.1f} "
                  f"{o['time_forward_us']:>8.1f} {e['time_forward_us'] / o['time_forward_us']:>5.2f}"
                  f"  {steps[0]:>8.1f}/{steps[1]:>7.1f}/{steps[2]:>7.1f}")
            blocks.append(dict(label=label, count=count, w_in=block.w_in, w_out=block.w_out,
                               stride=block.stride, group_width=block.group_width,
                               se_width=block.se_width, input_hw=list(hw), **row))
        totals = {}
        for training in (False, True):
            for s in SCHEDULES:
                t = model_traffic(spec, args.batch, args.resolution, schedule=s,
                                  training=training, dtype=dtype)
                tot = t.total()
                totals[f"{'train' if training else 'eval'}_{s}"] = dict(
                    bytes=tot.bytes, flops=tot.flops, kernels=tot.kernels,
                    time_ms=1e3 * t.roofline_seconds(ceiling))
        for mode, what in (("eval", "inference"), ("train", "training step")):
            ms = {s: totals[f"{mode}_{s}"]["time_ms"] for s in SCHEDULES}
            print(f"whole network, {what}, roofline ms: "
                  + " / ".join(f"{s} {v:.2f}" for s, v in ms.items())
                  + f"  (eager / ours {ms['eager'] / ms['ours']:.2f}x, eager / ours_ops "
                    f"{ms['eager'] / ms['ours_ops']:.2f}x)")
        doc["models"].append(dict(name=spec.name, blocks=blocks, totals=totals))
    out = Path(args.out) if args.out else RESULTS / f"traffic_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, separators=(",", ":")))  # compact: per-kernel lists are long
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
