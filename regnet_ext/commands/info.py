import json

HELP = "Show versions, what was compiled (CPU/CUDA, architectures), operators and GPU verification."


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _format(value):
    if isinstance(value, dict):
        return ", ".join(f"{k.removeprefix('regnet_ext::')}={'yes' if v else 'no'}"
                         for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


def run(args):
    from ..info import collect

    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {_format(value)}")
    return 0
