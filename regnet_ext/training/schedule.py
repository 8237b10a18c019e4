"""The learning-rate schedule of the paper's recipe (pycls): cosine decay to zero with an optional
linear warmup, applied per iteration (smooth even for runs of a few epochs)."""
import math


class CosineWithWarmup:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    ``0.5 * (1 + cos(pi * step / total_steps))``, times a warmup factor rising linearly from
    ``warmup_factor`` to 1 over the first ``warmup_steps`` steps (pycls's shape, per iteration
    instead of per epoch). A callable object, so LambdaLR's state_dict records its settings.
    """

    def __init__(self, total_steps, warmup_steps=0, warmup_factor=0.1):
        if total_steps < 1:
            raise ValueError(f"total_steps: expected >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps: expected 0..{total_steps}, got {warmup_steps}")
        if not 0.0 < warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor: expected 0 < warmup_factor <= 1, got {warmup_factor}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            cosine *= self.warmup_factor * (1.0 - alpha) + alpha
        return cosine
