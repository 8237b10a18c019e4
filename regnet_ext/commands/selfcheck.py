"""`regnet-ext selfcheck`: every operator on this machine's device vs stock PyTorch."""
import json
import sys

from ._checks import option_error

HELP = ("Run every regnet_ext operator on random inputs against stock PyTorch and report pass/fail "
        "per operator and dtype (exit status 1 on any failure).")

_DTYPES = ("float32", "float16", "bfloat16", "float64")


def add_arguments(parser):
    parser.add_argument("--device", default=None,
                        help="device to check, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    parser.add_argument("--dtypes", nargs="+", choices=_DTYPES, default=None,
                        help="dtypes to check (default: float32/float16/bfloat16 on CUDA, float32/bfloat16 on CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args):
    import torch

    from .. import _verification, selfcheck

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = [getattr(torch, name) for name in args.dtypes] if args.dtypes else None
    try:
        results = selfcheck.run(device, dtypes, seed=args.seed)
    except (ImportError, RuntimeError) as exc:
        print(f"regnet-ext selfcheck: {option_error(exc, args)}", file=sys.stderr)
        return 2
    passed = selfcheck.all_passed(results)
    if args.json:
        print(json.dumps({"device": str(device), "passed": passed,
                          "results": [r.as_dict() for r in results]}, indent=2))
        return 0 if passed else 1
    print(f"regnet_ext selfcheck on {device}"
          + (f" ({torch.cuda.get_device_name(torch.device(device))})" if device.startswith("cuda") else ""))
    print(f"{'operator':36s} {'dtype':9s} {'result':6s} {'max error':>10s} {'tolerance':>10s}  worst case")
    for r in results:
        print(f"{r.op:36s} {r.dtype:9s} {'pass' if r.passed else 'FAIL':6s} {r.max_error:10.3g} {r.tolerance:10.3g}  "
              f"{r.detail}")
    failed = sum(not r.passed for r in results)
    print(f"\n{len(results) - failed}/{len(results)} checks passed")
    if device.startswith("cuda") and not _verification.CUDA_KERNELS_GPU_VERIFIED:
        print(_verification.CUDA_VERIFICATION)
    return 0 if passed else 1
