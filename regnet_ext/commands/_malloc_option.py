"""--tune-malloc / --no-tune-malloc: glibc malloc settings for the commands and benchmarks that
run models on the CPU (see regnet_ext.allocator for why and what it costs)."""
import argparse
import sys


def add_tune_malloc_argument(parser, effect):
    """The flag, on by default; ``effect`` says in the help what it changes for this command."""
    parser.add_argument("--tune-malloc", action=argparse.BooleanOptionalAction, default=None,
                        help=f"{effect} (glibc only; see regnet_ext.allocator). On by default; "
                             "--no-tune-malloc keeps glibc's own settings")


def apply_tune_malloc(args, program, **settings):
    """Calls tune_malloc(**settings) unless --no-tune-malloc; returns whether it applied. Where
    malloc is not glibc's, warns only when the flag was given (the default says nothing)."""
    if args.tune_malloc is False:
        return False
    from ..allocator import tune_malloc

    applied = tune_malloc(**settings)
    if not applied and args.tune_malloc:
        print(f"{program}: --tune-malloc: malloc is not glibc's here; left as it is",
              file=sys.stderr)
    return applied
