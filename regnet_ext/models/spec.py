"""Plain records that describe a network: what the generator produces, what models and the
complexity model consume, and what design-space samplers draw."""
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class AnyNetSpec:
    """A stem, stages of residual bottleneck blocks, and a head.

    Per-stage lists all have one entry per stage. ``bottleneck_multipliers`` follow pycls: a
    block's inner width is ``round(width * bm)`` (the paper's bottleneck ratio b is 1 / bm).
    Widths and group widths are taken as given: they must already be compatible (see
    ``generator.adjust_block_compatibility``).
    """

    depths: tuple
    widths: tuple
    group_widths: tuple
    bottleneck_multipliers: tuple = None
    strides: tuple = None
    se_ratio: float = 0.0
    stem_width: int = 32
    in_channels: int = 3
    num_classes: int = 1000
    name: str = field(default="", compare=False)

    def __post_init__(self):
        n = len(self.depths)
        set_ = object.__setattr__
        set_(self, "depths", tuple(int(d) for d in self.depths))
        set_(self, "widths", tuple(int(w) for w in self.widths))
        set_(self, "group_widths", tuple(int(g) for g in self.group_widths))
        bms = self.bottleneck_multipliers if self.bottleneck_multipliers is not None else (1.0,) * n
        strides = self.strides if self.strides is not None else (2,) * n
        set_(self, "bottleneck_multipliers", tuple(float(b) for b in bms))
        set_(self, "strides", tuple(int(s) for s in strides))
        self.validate()

    def validate(self):
        n = len(self.depths)
        if n < 1:
            raise ValueError("depths: expected at least one stage")
        for name in ("widths", "group_widths", "bottleneck_multipliers", "strides"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: expected {n} entries (one per stage), "
                                 f"got {len(getattr(self, name))}")
        for name in ("depths", "widths", "group_widths"):
            bad = [v for v in getattr(self, name) if v < 1]
            if bad:
                raise ValueError(f"{name}: every entry must be >= 1, "
                                 f"got {list(getattr(self, name))}")
        if any(b <= 0 for b in self.bottleneck_multipliers):
            raise ValueError("bottleneck_multipliers: must be > 0, "
                             f"got {self.bottleneck_multipliers}")
        if any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"strides: each must be 1 or 2, got {self.strides}")
        if not 0.0 <= self.se_ratio < 1.0:
            raise ValueError(f"se_ratio: expected 0 <= se_ratio < 1, got {self.se_ratio}")
        for w, bm, g in zip(self.widths, self.bottleneck_multipliers, self.group_widths):
            inner = block_inner_width(w, bm)
            if inner % g:
                raise ValueError(
                    f"group_widths: inner width {inner} (width {w} x bottleneck {bm}) is not "
                    f"divisible by group width {g}; use generator.adjust_block_compatibility")
        for name in ("stem_width", "in_channels", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")

    @property
    def num_stages(self):
        return len(self.depths)

    def stage_blocks(self):
        """Yields, per stage, (first block, the block its other d-1 blocks repeat or None, d).

        A stage's blocks after its first are identical (input = output width, stride 1), so
        arithmetic over a spec (complexity, traffic) can visit two blocks per stage."""
        w_in = self.stem_width
        for stage, (d, w, bm, g, s) in enumerate(zip(self.depths, self.widths,
                                                     self.bottleneck_multipliers,
                                                     self.group_widths, self.strides)):
            first = BlockSpec(stage=stage, index=0, w_in=w_in, w_out=w, stride=s,
                              bottleneck_multiplier=bm, group_width=g, se_ratio=self.se_ratio)
            rest = BlockSpec(stage=stage, index=1, w_in=w, w_out=w, stride=1,
                             bottleneck_multiplier=bm, group_width=g,
                             se_ratio=self.se_ratio) if d > 1 else None
            yield first, rest, d
            w_in = w

    def blocks(self):
        """Yields one BlockSpec per block, in order."""
        for first, rest, d in self.stage_blocks():
            yield first
            for i in range(1, d):
                yield replace(rest, index=i)


@dataclass(frozen=True)
class BlockSpec:
    """One residual bottleneck block (X block; Y block when se_ratio > 0)."""

    stage: int
    index: int
    w_in: int
    w_out: int
    stride: int
    bottleneck_multiplier: float
    group_width: int
    se_ratio: float

    @property
    def inner_width(self):
        return block_inner_width(self.w_out, self.bottleneck_multiplier)

    @property
    def groups(self):
        return self.inner_width // self.group_width

    @property
    def se_width(self):
        # SE width follows the block's *input* width (pycls, torchvision and timm agree).
        return int(round(self.se_ratio * self.w_in)) if self.se_ratio > 0 else 0

    @property
    def has_projection(self):
        return self.w_in != self.w_out or self.stride != 1


def block_inner_width(width, bottleneck_multiplier):
    return int(round(width * bottleneck_multiplier))
