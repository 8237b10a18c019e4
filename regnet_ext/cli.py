"""The `regnet-ext` command. Each sub-command is a module in regnet_ext/commands/ with
HELP, add_arguments(parser) and run(args) -> exit code."""
import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands


def build_parser():
    parser = argparse.ArgumentParser(
        prog="regnet-ext", description="RegNet models, fused kernels, profiler and design-space tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        name = getattr(module, "NAME", info.name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (sweeps and train resume)
        print(f"\nregnet-ext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
