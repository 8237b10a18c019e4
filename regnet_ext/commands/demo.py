HELP = "The main job: model table, RegNetY-400MF forward pass (more stages join as they land)."


def add_arguments(parser):
    parser.add_argument("--model", default="RegNetY-400MF", help="model to run (default RegNetY-400MF)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--resolution", type=int, default=224, help="input resolution (default 224)")


def run(args):
    import time

    import torch

    from ..models import complexity, regnet
    from .models import format_table, model_rows

    print("== Standard RegNet models (pycls generator, analytic complexity at 224x224)")
    print(format_table(model_rows(), 224))
    print(f"\n== {args.model}: forward pass of a random batch {args.batch}x3x{args.resolution}x{args.resolution} on the CPU")
    torch.manual_seed(0)
    model = regnet(args.model).eval().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)  # warm-up
        t0 = time.perf_counter()
        logits = model(x)
        elapsed = time.perf_counter() - t0
    c = complexity(model.spec, args.resolution)
    print(f"logits {tuple(logits.shape)}, {c.flops / 1e6:.1f} MFLOPs/image, {c.params / 1e6:.2f} M params, "
          f"{args.batch / elapsed:.1f} images/s (one timed pass, {torch.get_num_threads()} threads)")
    return 0
