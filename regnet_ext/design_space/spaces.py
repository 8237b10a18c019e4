"""Design spaces: AnyNetX A-E and RegNetX/RegNetY, as objects with parameter ranges and constraints.

A space draws *configurations* (plain dicts of its free parameters), checks them against its
constraints, and turns them into an ``AnyNetSpec`` (and so into a model). Variants are made with
``space.replace(...)``: narrower ranges, a fixed bottleneck ratio or group width, SE on or off.

Bottleneck ratios follow the paper: b = block width / inner width (pycls's multiplier is 1 / b).
"""
import abc
import dataclasses
import math
from dataclasses import dataclass

from ..models.generator import QUANTUM, adjust_block_compatibility, generate_regnet
from ..models.spec import AnyNetSpec
from . import distributions as dist


class InvalidConfigError(ValueError):
    """A configuration that breaks one of its space's constraints."""


class DesignSpace(abc.ABC):
    """Common interface: draw(rng) -> config, check(config), to_spec(config), build_model(config)."""

    name: str
    family: str

    @abc.abstractmethod
    def draw(self, rng):
        """A random configuration drawn with the space's distributions."""

    @abc.abstractmethod
    def check(self, config):
        """Raises InvalidConfigError if `config` breaks one of the space's constraints."""

    @abc.abstractmethod
    def to_spec(self, config, *, num_classes=1000, in_channels=3):
        """The AnyNetSpec of a configuration (InvalidConfigError if it is not in the space)."""

    def build_model(self, config, *, num_classes=1000, in_channels=3):
        """The nn.Module (regnet_ext.models.AnyNet) of a configuration."""
        from ..models.anynet import AnyNet

        return AnyNet(self.to_spec(config, num_classes=num_classes, in_channels=in_channels))

    def replace(self, **changes):
        """A variant of this space (e.g. ``replace(name="x_b1", bottleneck_ratios=(1,))``).

        Without a ``name``, a variant that changes a setting is named ``<name>_custom`` (as
        ``space sample --set`` names it), so that its samples are not grouped with the base
        space's; pass ``name=`` to tell several variants apart."""
        if "name" not in changes and any(getattr(self, k, None) != v for k, v in changes.items()):
            # A variant of a variant keeps one suffix: regnetx_custom, not regnetx_custom_custom.
            changes["name"] = self.name if self.name.endswith("_custom") else f"{self.name}_custom"
        return dataclasses.replace(self, **changes)

    def describe(self):
        """The space's settings as a JSON-ready dict."""
        out = {"family": self.family}
        out.update({k: list(v) if isinstance(v, tuple) else v
                    for k, v in dataclasses.asdict(self).items()})
        return out


def _check_range(name, rng, *, low=None, kind=float):
    numbers = isinstance(rng, tuple) and all(isinstance(v, (int, float)) for v in rng)
    if not (numbers and len(rng) == 2 and rng[0] <= rng[1]):
        raise ValueError(f"{name}: expected a (low, high) pair with low <= high, got {rng!r}")
    if low is not None and rng[0] < low:
        raise ValueError(f"{name}: values must be >= {low}, got {rng!r}")
    if kind is int and not all(float(v).is_integer() for v in rng):
        raise ValueError(f"{name}: expected integer bounds, got {rng!r}")


def _check_values(name, values, *, positive=True):
    numbers = isinstance(values, tuple) and all(isinstance(v, (int, float)) for v in values)
    if not (values and numbers):
        raise ValueError(f"{name}: expected a non-empty tuple of numbers, got {values!r}")
    if positive and any(v <= 0 for v in values):
        raise ValueError(f"{name}: values must be > 0, got {values!r}")


def _is_power_of_two(v):
    return float(v).is_integer() and v >= 1 and (int(v) & (int(v) - 1)) == 0


def _bottleneck_multiplier(ratio):
    bm = 1.0 / ratio
    if not (bm < 1 or float(bm).is_integer()):
        raise InvalidConfigError(f"bottleneck_ratio: 1/b must be < 1 or an integer, got b={ratio}")
    return bm


def _require(ok, message):
    # message is a callable: formatting is deferred to failures (the sampler checks ~10^5 draws).
    if not ok:
        raise InvalidConfigError(message())


@dataclass(frozen=True)
class AnyNetXSpace(DesignSpace):
    """AnyNetX: stem, ``stages`` stages of X blocks, head; per stage a depth d_i, width w_i,
    bottleneck ratio b_i and group width g_i (16 free parameters for 4 stages).

    Draws: d_i uniform in ``depth``; w_i log-uniform multiple of ``width_quantum`` in ``width``;
    b_i and g_i uniform over ``bottleneck_ratios`` / ``group_widths``. The A->E refinements:
    B shares b, C also shares g, D adds w_{i+1} >= w_i, E adds d_{i+1} >= d_i. Shared values are
    drawn once; ordered ones are drawn per stage and sorted (the order statistics of the free draw).

    ``to_spec`` applies pycls's group/bottleneck compatibility step, which may lower a group width
    to the inner width or round the inner width to a multiple of the group width.
    """

    name: str = "anynetx_a"
    stages: int = 4
    depth: tuple = (1, 16)
    width: tuple = (8, 1024)
    width_quantum: int = QUANTUM
    bottleneck_ratios: tuple = (1, 2, 4)
    group_widths: tuple = (1, 2, 4, 8, 16, 32)
    shared_bottleneck: bool = False
    shared_group_width: bool = False
    increasing_widths: bool = False
    increasing_depths: bool = False
    se_ratio: float = 0.0
    family = "anynet"

    def __post_init__(self):
        if not (isinstance(self.stages, int) and self.stages >= 1):
            raise ValueError(f"stages: expected an integer >= 1, got {self.stages!r}")
        _check_range("depth", self.depth, low=1, kind=int)
        _check_range("width", self.width, low=1, kind=int)
        if not (isinstance(self.width_quantum, int) and self.width_quantum >= 1):
            raise ValueError(f"width_quantum: expected an integer >= 1, got {self.width_quantum!r}")
        if self.width[0] % self.width_quantum or self.width[1] % self.width_quantum:
            raise ValueError(f"width: bounds must be multiples of width_quantum="
                             f"{self.width_quantum}, got {self.width!r}")
        _check_values("bottleneck_ratios", self.bottleneck_ratios)
        _check_values("group_widths", self.group_widths)
        if not all(float(g).is_integer() for g in self.group_widths):
            raise ValueError(f"group_widths: expected integers, got {self.group_widths!r}")
        if not 0.0 <= self.se_ratio < 1.0:
            raise ValueError(f"se_ratio: expected 0 <= se_ratio < 1, got {self.se_ratio!r}")

    def draw(self, rng):
        n = self.stages
        depths = [dist.uniform_int(rng, *self.depth) for _ in range(n)]
        widths = [dist.log_uniform(rng, *self.width, self.width_quantum) for _ in range(n)]
        if self.shared_bottleneck:
            ratios = [dist.choice(rng, self.bottleneck_ratios)] * n
        else:
            ratios = [dist.choice(rng, self.bottleneck_ratios) for _ in range(n)]
        if self.shared_group_width:
            groups = [dist.choice(rng, self.group_widths)] * n
        else:
            groups = [dist.choice(rng, self.group_widths) for _ in range(n)]
        if self.increasing_widths:
            widths.sort()
        if self.increasing_depths:
            depths.sort()
        return {"depths": depths, "widths": widths, "bottleneck_ratios": ratios,
                "group_widths": groups}

    def check(self, config):
        n = self.stages
        for key in ("depths", "widths", "bottleneck_ratios", "group_widths"):
            _require(key in config and len(config[key]) == n,
                     lambda: f"{key}: expected {n} entries (one per stage) in {config!r}")
        d, w, b, g = (config[k] for k in ("depths", "widths", "bottleneck_ratios", "group_widths"))
        _require(all(float(x).is_integer() and self.depth[0] <= x <= self.depth[1] for x in d),
                 lambda: f"depths: each must be an integer in {self.depth}, got {d}")
        lo, hi, q = self.width[0], self.width[1], self.width_quantum
        _require(all(lo <= x <= hi and x % q == 0 for x in w),
                 lambda: f"widths: each must be a multiple of {q} in {self.width}, got {w}")
        _require(all(x in self.bottleneck_ratios for x in b),
                 lambda: f"bottleneck_ratios: each must be one of {self.bottleneck_ratios}, "
                         f"got {b}")
        _require(all(x in self.group_widths for x in g),
                 lambda: f"group_widths: each must be one of {self.group_widths}, got {g}")
        _require(not self.shared_bottleneck or len(set(b)) == 1,
                 lambda: f"bottleneck_ratios: {self.name} shares one ratio across stages, got {b}")
        _require(not self.shared_group_width or len(set(g)) == 1,
                 lambda: f"group_widths: {self.name} shares one group width across stages, got {g}")
        _require(not self.increasing_widths or all(x <= y for x, y in zip(w, w[1:])),
                 lambda: f"widths: {self.name} needs non-decreasing widths, got {w}")
        _require(not self.increasing_depths or all(x <= y for x, y in zip(d, d[1:])),
                 lambda: f"depths: {self.name} needs non-decreasing depths, got {d}")

    def to_spec(self, config, *, num_classes=1000, in_channels=3):
        self.check(config)
        return self._spec(config, num_classes, in_channels)

    def _spec(self, config, num_classes, in_channels):
        bms = [_bottleneck_multiplier(b) for b in config["bottleneck_ratios"]]
        widths, groups = adjust_block_compatibility(config["widths"], bms, config["group_widths"])
        return AnyNetSpec(depths=config["depths"], widths=widths, group_widths=groups,
                          bottleneck_multipliers=bms, se_ratio=self.se_ratio,
                          num_classes=num_classes, in_channels=in_channels, name=self.name)


@dataclass(frozen=True)
class RegNetSpace(DesignSpace):
    """RegNet: widths and depths from the quantized linear generator (d, w0, wa, wm), plus a group
    width g and bottleneck ratio b shared by all stages; se_ratio > 0 gives RegNetY.

    Defaults: d, w0, wa and wm as pycls's RegNet sampler (REGNET_SAMPLER in
    pycls/sweep/config.py) draws them: d uniform in [12, 28]; w0 log-uniform multiple of 8 in
    [8, 256]; wa log-uniform in [8, 256] quantized to 0.1; wm log-uniform in [2, 3] quantized to
    0.001. g and b span the paper's RegNet space, whose g and b are AnyNetX's: ``group_width``
    (1, 32), drawn with pycls's group-width distribution (a power of two, redrawn as a log-uniform
    multiple of 8 once it reaches 8: 1, 2, 4, 8, 16, 24 or 32, so 24 too, which the paper's
    {1, 2, 4, ..., 32} lacks), and b uniform over ``bottleneck_ratios`` (1, 2, 4). pycls's sampler
    itself defaults to g in [8, 128] and b = 1 (BOT_MUL [1, 1]):
    ``REGNETX.replace(group_width=(8, 128), bottleneck_ratios=(1,))``. The paper's full space
    (d < 64, w0 < 256, wa < 256, 1.5 <= wm <= 3) is
    ``replace(depth=(1, 63), w0=(8, 248), wa=(0.1, 255.9), wm=(1.5, 3.0))``.
    Configurations whose widths do not form exactly ``stages`` stages (or whose exponents collapse
    onto one width) are outside the space.
    """

    name: str = "regnetx"
    stages: int = 4
    depth: tuple = (12, 28)
    w0: tuple = (8, 256)
    wa: tuple = (8.0, 256.0)
    wm: tuple = (2.0, 3.0)
    group_width: tuple = (1, 32)
    bottleneck_ratios: tuple = (1, 2, 4)
    se_ratio: float = 0.0
    family = "regnet"

    W0_QUANTUM = QUANTUM
    WA_QUANTUM = 0.1
    WM_QUANTUM = 0.001
    GROUP_QUANTUM = 8

    def __post_init__(self):
        if not (isinstance(self.stages, int) and self.stages >= 1):
            raise ValueError(f"stages: expected an integer >= 1, got {self.stages!r}")
        _check_range("depth", self.depth, low=1, kind=int)
        _check_range("w0", self.w0, low=self.W0_QUANTUM, kind=int)
        if self.w0[0] % self.W0_QUANTUM or self.w0[1] % self.W0_QUANTUM:
            raise ValueError(f"w0: bounds must be multiples of {self.W0_QUANTUM}, got {self.w0!r}")
        _check_range("wa", self.wa, low=self.WA_QUANTUM)
        _check_range("wm", self.wm)
        if self.wm[0] <= 1:
            raise ValueError(f"wm: values must be > 1, got {self.wm!r}")
        _check_range("group_width", self.group_width, low=1, kind=int)
        lo, hi = self.group_width
        if lo != hi and not (_is_power_of_two(lo) and (_is_power_of_two(hi) or hi % 8 == 0)):
            raise ValueError(f"group_width: low must be a power of two and high a power of two "
                             f"or a multiple of {self.GROUP_QUANTUM} (or low == high), "
                             f"got {self.group_width!r}")
        _check_values("bottleneck_ratios", self.bottleneck_ratios)
        for b in self.bottleneck_ratios:
            _bottleneck_multiplier(b)
        if not 0.0 <= self.se_ratio < 1.0:
            raise ValueError(f"se_ratio: expected 0 <= se_ratio < 1, got {self.se_ratio!r}")

    def draw(self, rng):
        lo, hi = self.group_width
        if lo == hi:
            group = int(lo)
        else:
            group = dist.power2_or_log_uniform(rng, lo, hi, self.GROUP_QUANTUM)
        return {"depth": dist.uniform_int(rng, *self.depth),
                "w0": dist.log_uniform(rng, *self.w0, self.W0_QUANTUM),
                "wa": dist.log_uniform(rng, *self.wa, self.WA_QUANTUM),
                "wm": dist.log_uniform(rng, *self.wm, self.WM_QUANTUM),
                "group_width": group,
                "bottleneck_ratio": dist.choice(rng, self.bottleneck_ratios)}

    def check(self, config):
        self._check_parameters(config)
        self._design(config)

    def _check_parameters(self, config):
        keys = ("depth", "w0", "wa", "wm", "group_width", "bottleneck_ratio")
        missing = [k for k in keys if k not in config]
        _require(not missing, lambda: f"config: missing {missing} in {config!r}")
        d, w0, wa, wm, g, b = (config[k] for k in keys)
        _require(float(d).is_integer() and self.depth[0] <= d <= self.depth[1],
                 lambda: f"depth: expected an integer in {self.depth}, got {d}")
        _require(self.w0[0] <= w0 <= self.w0[1] and w0 % self.W0_QUANTUM == 0,
                 lambda: f"w0: expected a multiple of {self.W0_QUANTUM} in {self.w0}, got {w0}")
        _require(self.wa[0] <= wa <= self.wa[1],
                 lambda: f"wa: expected a value in {self.wa}, got {wa}")
        _require(self.wm[0] <= wm <= self.wm[1],
                 lambda: f"wm: expected a value in {self.wm}, got {wm}")
        lo, hi = self.group_width
        _require(lo <= g <= hi and float(g).is_integer()
                 and (lo == hi or _is_power_of_two(g) or g % self.GROUP_QUANTUM == 0),
                 lambda: f"group_width: expected a power of two or a multiple of "
                         f"{self.GROUP_QUANTUM} in {self.group_width}, got {g}")
        _require(b in self.bottleneck_ratios,
                 lambda: f"bottleneck_ratio: expected one of {self.bottleneck_ratios}, got {b}")

    def _design(self, config):
        # Cheap early exit: the last block's exponent fixes total_stages, so most out-of-space
        # draws are refused without running the generator (the margin leaves ties to it).
        d, w0, wa, wm = int(config["depth"]), config["w0"], config["wa"], config["wm"]
        s_last = math.log((w0 + wa * (d - 1)) / w0) / math.log(wm)
        _require(self.stages - 1.5 - 1e-6 < s_last < self.stages - 0.5 + 1e-6,
                 lambda: f"config: the widths span {round(s_last) + 1} exponents; {self.name} "
                         f"needs exactly {self.stages} stages")
        design = generate_regnet(config["w0"], config["wa"], config["wm"], int(config["depth"]),
                                 int(config["group_width"]),
                                 _bottleneck_multiplier(config["bottleneck_ratio"]))
        _require(design.num_stages == design.total_stages == self.stages,
                 lambda: f"config: widths form {design.num_stages} distinct stages over "
                         f"{design.total_stages} exponents; {self.name} needs exactly "
                         f"{self.stages}")
        return design

    def to_spec(self, config, *, num_classes=1000, in_channels=3):
        # check() ends by running the generator; reuse its design rather than generate twice.
        self._check_parameters(config)
        return self._design(config).to_spec(se_ratio=self.se_ratio, num_classes=num_classes,
                                            in_channels=in_channels, name=self.name)


ANYNETX_A = AnyNetXSpace("anynetx_a")
ANYNETX_B = ANYNETX_A.replace(name="anynetx_b", shared_bottleneck=True)
ANYNETX_C = ANYNETX_B.replace(name="anynetx_c", shared_group_width=True)
ANYNETX_D = ANYNETX_C.replace(name="anynetx_d", increasing_widths=True)
ANYNETX_E = ANYNETX_D.replace(name="anynetx_e", increasing_depths=True)
REGNETX = RegNetSpace("regnetx")
REGNETY = REGNETX.replace(name="regnety", se_ratio=0.25)

SPACES = {s.name: s for s in (ANYNETX_A, ANYNETX_B, ANYNETX_C, ANYNETX_D, ANYNETX_E,
                              REGNETX, REGNETY)}


def get_space(space, **changes):
    """A space by name (see SPACES) or as given, with optional changes (a user-defined variant)."""
    if isinstance(space, DesignSpace):
        base = space
    elif isinstance(space, str) and space.lower() in SPACES:
        base = SPACES[space.lower()]
    else:
        raise ValueError(f"space: expected a DesignSpace or one of {sorted(SPACES)}, got {space!r}")
    return base.replace(**changes) if changes else base


def spec_key(spec):
    """What makes two specs the same architecture (names and class counts aside)."""
    return (spec.depths, spec.widths, spec.group_widths, spec.bottleneck_multipliers,
            spec.strides, float(spec.se_ratio), spec.stem_width)

