"""`regnet-ext train`: train a standard or custom RegNet on digits (default) or an ImageFolder.

Scale out with torchrun, e.g. ``torchrun --nproc_per_node=2 -m regnet_ext train ...`` (gloo on
CPU, nccl on CUDA); ``--batch-size`` is the global batch, split over the processes.
"""
import dataclasses
import json
import os
import sys

from .._paths import check_output_path_in_new_folders
from ._checks import (FUSE_MISSING, fuse_available, option_error, resolve_device,
                      sigterm_unwinds)
from ._malloc_option import add_tune_malloc_argument, apply_tune_malloc

HELP = ("Train a RegNet (standard or custom, --fused on/off) with the paper's recipe on digits or "
        "an ImageFolder; checkpoints, resume, torchrun DDP.")

DEFAULT_MODEL = "RegNetX-200MF"
CUSTOM_PARAMS = ("w0", "wa", "wm", "depth", "group_width")
# The Python API's parameter names in error messages -> the options that set them.
RENAMES = {"name_or_path": "data", "num_workers": "workers", "name": "model",
           "nesterov": "momentum"}
# fit()'s resume settings that no option of the same name sets -> the options that do.
RESUME_OPTIONS = {"model_record.spec": "--model", "model_record.resolution": "--resolution",
                  "train_size": "--data"}


def add_arguments(parser):
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None,
                       help=f"standard model name, any spelling (default {DEFAULT_MODEL} unless "
                            "--w0/--wa/--wm/--depth/--group-width describe a custom one; given "
                            "with --model, those and --bottleneck-multiplier/--se-ratio must "
                            "match the model's)")
    model.add_argument("--w0", type=int, help="custom RegNet: initial width (multiple of 8)")
    model.add_argument("--wa", type=float, help="custom RegNet: width slope")
    model.add_argument("--wm", type=float, help="custom RegNet: width multiplier (> 1)")
    model.add_argument("--depth", type=int, help="custom RegNet: number of blocks")
    model.add_argument("--group-width", type=int, help="custom RegNet: group width")
    model.add_argument("--bottleneck-multiplier", type=float, default=1.0,
                       help="custom RegNet: bottleneck multiplier (default 1)")
    model.add_argument("--se-ratio", type=float, default=None,
                       help="custom RegNet: squeeze-excite ratio (0 = RegNetX, the default; 0.25 = RegNetY)")
    model.add_argument("--rounding", default="pycls", choices=("pycls", "torchvision"),
                       help="generator rounding (default pycls)")
    model.add_argument("--fused", action="store_true",
                       help="train with the fused kernels (regnet_ext.fuse)")

    data = parser.add_argument_group("data")
    data.add_argument("--data", default="digits",
                      help="'digits' (scikit-learn's bundled 8x8 digits, default) or an "
                           "ImageFolder directory with train/ and val/")
    data.add_argument("--resolution", type=int, default=16,
                      help="input size (default 16: the digits are 8x8, so 16 loses nothing)")
    data.add_argument("--workers", type=int, default=0,
                      help="DataLoader worker processes (default 0)")

    recipe = parser.add_argument_group("recipe (SGD, Nesterov, cosine LR per iteration)")
    recipe.add_argument("--epochs", type=int, default=4, help="epochs (default 4)")
    recipe.add_argument("--batch-size", type=int, default=64,
                        help="global batch size over all processes (default 64)")
    # Measured on digits: 0.1 (the paper's ImageNet value) and 0.05 diverge in the first epoch
    # (the near-constant upsampled images make the stem's BatchNorm gradients large); 0.02 trains.
    recipe.add_argument("--lr", type=float, default=0.02,
                        help="base learning rate (default 0.02, stable on digits; the paper "
                             "uses 0.1 per 128 images on ImageNet)")
    recipe.add_argument("--weight-decay", type=float, default=5e-5,
                        help="weight decay (default 5e-5)")
    recipe.add_argument("--momentum", type=float, default=0.9, help="momentum (default 0.9)")
    recipe.add_argument("--warmup-epochs", type=float, default=1.0,
                        help="linear warmup from 0.1 x lr, in epochs (default 1)")
    recipe.add_argument("--label-smoothing", type=float, default=0.0,
                        help="label smoothing (default 0)")
    recipe.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--device", default="auto",
                           help="cpu, cuda or auto (default: cuda when available, else cpu)")
    run_group.add_argument("--sync-bn", action="store_true",
                           help="SyncBatchNorm across the torchrun processes (CUDA only, "
                                "refused on the CPU; a single process trains as without it)")
    run_group.add_argument("--checkpoint", default=None,
                           help="checkpoint file, written after every epoch (an existing "
                                "one is refused unless --resume is given)")
    run_group.add_argument("--resume", action="store_true",
                           help="continue from --checkpoint when it exists")
    add_tune_malloc_argument(run_group, "keep freed memory for reuse and serve every block from the "
                                        "heap, for fewer page faults on the CPU")
    run_group.add_argument("--no-progress", action="store_true",
                           help="no progress bar and no per-epoch lines")
    run_group.add_argument("--json", action="store_true",
                           help="print the result as JSON on stdout")


def build_model(args, num_classes):
    """The RegNet the arguments describe: a standard name (generator parameters given with it
    must match the model's, as regnet() checks) or the custom generator parameters."""
    from ..models import regnet

    given = {name: getattr(args, name) for name in CUSTOM_PARAMS if getattr(args, name) is not None}
    custom = given or args.se_ratio is not None or args.bottleneck_multiplier != 1.0
    name = args.model or (None if custom else DEFAULT_MODEL)
    missing = [f"--{k.replace('_', '-')}" for k in CUSTOM_PARAMS if k not in given]
    if name is None and missing:
        raise ValueError(f"{missing[0]}: a custom RegNet needs --w0, --wa, --wm, --depth and "
                         f"--group-width (missing {', '.join(missing)}), or give --model")
    try:
        return regnet(name, num_classes=num_classes, rounding=args.rounding,
                      bottleneck_multiplier=args.bottleneck_multiplier, se_ratio=args.se_ratio,
                      **given)
    except ValueError as e:  # regnet()'s "name" is the command's --model
        raise ValueError(str(e).replace("leave the name out", "leave --model out")) from e


def _prepare(args):
    import torch

    from ..training import load_dataset, num_classes_of

    if args.resume and not args.checkpoint:
        raise ValueError("--resume: needs --checkpoint PATH")
    if args.checkpoint:
        check_output_path_in_new_folders("--checkpoint", args.checkpoint)
        if not args.resume and os.path.lexists(args.checkpoint):  # the first epoch would replace it
            raise ValueError(f"--checkpoint: {args.checkpoint!r} exists; pass --resume to continue "
                             "from it, or remove it or choose another path")
    if args.fused and not fuse_available():
        raise ValueError(f"--fused: {FUSE_MISSING}; train without --fused")
    device = resolve_device(args.device)
    if args.sync_bn and not device.startswith("cuda"):
        # torch's SyncBatchNorm: plain BatchNorm in one process, an error at the first step of a
        # CPU run under torchrun (gloo).
        raise ValueError("--sync-bn: SyncBatchNorm needs CUDA; train on the CPU without it")

    def load(split):
        try:
            return load_dataset(args.data, resolution=args.resolution, split=split)
        except FileNotFoundError as e:  # torchvision's ImageFolder: no class folder, or no images
            raise ValueError(f"--data: {os.path.join(args.data, split)}: {e}") from e

    train, val = load("train"), load("val")
    torch.manual_seed(args.seed)  # the model's initialisation follows the seed too
    model = build_model(args, num_classes_of(train))
    return model, train, val, device


def _resume_error(e, args):
    """A ResumeMismatch in the command's terms: the option that differs, as on the command line."""
    option = RESUME_OPTIONS.get(e.key) or f"--{e.key.replace('_', '-')}"
    if option[2:].replace("-", "_") not in vars(args):  # set only from Python (nesterov, ...)
        return option_error(e, args, RENAMES)
    saved, current = e.saved, e.current
    if e.key == "model_record.spec":
        saved, current = _spec_names(saved, current)
    if e.key == "train_size":
        return (f"--resume: the checkpoint {e.path!r} was trained on {saved} images but this "
                f"run's --data has {current}; use the same --data or a new --checkpoint path")
    return (f"--resume: the checkpoint {e.path!r} was written with {option} {saved} but this "
            f"run has {option} {current}; use the same options or a new --checkpoint path")


def _spec_names(saved, current):
    # Two specs by name; where the names agree (e.g. another --data's class count), the fields.
    saved, current = dict(saved or {}), dict(current or {})
    if saved.get("name") != current.get("name"):
        return saved.get("name"), current.get("name")
    keys = [k for k in sorted(saved.keys() | current.keys()) if saved.get(k) != current.get(k)]
    return tuple(f"{d.get('name')} ({', '.join(f'{k}={d.get(k)}' for k in keys)})"
                 for d in (saved, current))


def run(args):
    from ..models import complexity
    from ..training import fit
    from ..training.loop import ResumeMismatch, TrainingDiverged

    apply_tune_malloc(args, "regnet-ext train", use_mmap=False)
    try:
        model, train, val, device = _prepare(args)
    except (ValueError, RuntimeError) as e:
        print(f"regnet-ext train: error: {option_error(e, args, RENAMES)}", file=sys.stderr)
        return 2
    cost = complexity(model.spec, args.resolution)  # before fit: fuse() may swap modules
    try:
        # SIGTERM unwinds like Ctrl-C: a checkpoint being written removes its temporary file.
        with sigterm_unwinds():
            result = fit(model, train, val, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
                         warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                         seed=args.seed, device=device, progress=not args.no_progress,
                         fused=args.fused, checkpoint=args.checkpoint, resume=args.resume,
                         num_workers=args.workers, sync_batchnorm=args.sync_bn,
                         model_record={"spec": dataclasses.asdict(model.spec),
                                       "resolution": args.resolution})
    except ResumeMismatch as e:
        print(f"regnet-ext train: error: {_resume_error(e, args)}", file=sys.stderr)
        return 2
    except ValueError as e:  # a setting fit() refuses (batch too large, ...)
        print(f"regnet-ext train: error: {option_error(e, args, RENAMES)}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:  # not a usage error: the options were valid, the run failed
        print(f"regnet-ext train: error: {str(e).replace('smaller lr', 'smaller --lr')}",
              file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports
    report = {"model": model.spec.name, "params": cost.params, "flops": cost.flops,
              "resolution": args.resolution, "data": str(args.data), "train_size": len(train),
              "val_size": len(val), "batch_size": args.batch_size, "lr": args.lr,
              "fused": args.fused, **result}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report, args)
    return 0


def _print_table(r, args):
    rows = [
        ("model", f"{r['model']}  ({r['params']:,} params, {r['flops'] / 1e6:.2f} M "
                  f"multiply-adds/image at {r['resolution']}x{r['resolution']})"),
        ("data", f"{r['data']}: {r['train_size']} train / {r['val_size']} val images"),
        ("recipe", f"{_epochs(r['epochs'])}, batch {r['batch_size']}, SGD lr {r['lr']} "
                   f"(Nesterov, momentum {args.momentum}, weight decay {args.weight_decay}), "
                   f"cosine per iteration, warmup {_epochs(args.warmup_epochs)}"),
        ("run", f"{r['device']} x {r['world_size']} process(es), fused: "
                f"{'yes' if r['fused'] else 'no'}"
                + (f", resumed after epoch {r['resumed_from_epoch']}"
                   if r['resumed_from_epoch'] else "")),
        ("time", f"{r['train_time_s']:.1f} s training+evaluation"
                 + (f", {r['images_per_s']:.0f} train images/s" if r["images_per_s"] else "")),
        ("top-1", f"accuracy {r['top1_acc']:.2f}%  (error {r['top1_error']:.2f}%)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _epochs(n):
    return f"{n:g} epoch{'' if n == 1 else 's'}"
