"""The 24 standard RegNetX/RegNetY models of the paper, their names, and the regnet() builder."""
import re
from collections import OrderedDict, namedtuple
from fractions import Fraction

from .anynet import AnyNet
from .generator import ROUNDINGS, generate_regnet

RegNetParams = namedtuple("RegNetParams", "w0 wa wm depth group_width se_ratio")

_SE = 0.25
# Paper names -> generator parameters (pycls's published configurations; bottleneck b = 1).
STANDARD_MODELS = OrderedDict([
    ("RegNetX-200MF", RegNetParams(24, 36.44, 2.49, 13, 8, 0.0)),
    ("RegNetX-400MF", RegNetParams(24, 24.48, 2.54, 22, 16, 0.0)),
    ("RegNetX-600MF", RegNetParams(48, 36.97, 2.24, 16, 24, 0.0)),
    ("RegNetX-800MF", RegNetParams(56, 35.73, 2.28, 16, 16, 0.0)),
    ("RegNetX-1.6GF", RegNetParams(80, 34.01, 2.25, 18, 24, 0.0)),
    ("RegNetX-3.2GF", RegNetParams(88, 26.31, 2.25, 25, 48, 0.0)),
    ("RegNetX-4.0GF", RegNetParams(96, 38.65, 2.43, 23, 40, 0.0)),
    ("RegNetX-6.4GF", RegNetParams(184, 60.83, 2.07, 17, 56, 0.0)),
    ("RegNetX-8.0GF", RegNetParams(80, 49.56, 2.88, 23, 120, 0.0)),
    ("RegNetX-12GF", RegNetParams(168, 73.36, 2.37, 19, 112, 0.0)),
    ("RegNetX-16GF", RegNetParams(216, 55.59, 2.1, 22, 128, 0.0)),
    ("RegNetX-32GF", RegNetParams(320, 69.86, 2.0, 23, 168, 0.0)),
    ("RegNetY-200MF", RegNetParams(24, 36.44, 2.49, 13, 8, _SE)),
    ("RegNetY-400MF", RegNetParams(48, 27.89, 2.09, 16, 8, _SE)),
    ("RegNetY-600MF", RegNetParams(48, 32.54, 2.32, 15, 16, _SE)),
    ("RegNetY-800MF", RegNetParams(56, 38.84, 2.4, 14, 16, _SE)),
    ("RegNetY-1.6GF", RegNetParams(48, 20.71, 2.65, 27, 24, _SE)),
    ("RegNetY-3.2GF", RegNetParams(80, 42.63, 2.66, 21, 24, _SE)),
    ("RegNetY-4.0GF", RegNetParams(96, 31.41, 2.24, 22, 64, _SE)),
    ("RegNetY-6.4GF", RegNetParams(112, 33.22, 2.27, 25, 72, _SE)),
    ("RegNetY-8.0GF", RegNetParams(192, 76.82, 2.19, 17, 56, _SE)),
    ("RegNetY-12GF", RegNetParams(168, 73.36, 2.37, 19, 112, _SE)),
    ("RegNetY-16GF", RegNetParams(200, 106.23, 2.48, 18, 112, _SE)),
    ("RegNetY-32GF", RegNetParams(232, 115.89, 2.53, 20, 232, _SE)),
])

# Paper ("RegNetY-1.6GF", "regnety-8gf") and torchvision ("regnet_y_1_6gf") spellings.
_PAPER_NAME = re.compile(r"^regnet[-_]?([xy])[-_]?(\d+)(?:[._](\d+))?(mf|gf)$")
# timm spelling: three digits of tenths of a GF ("regnety_016" = 1.6GF).
_TIMM_NAME = re.compile(r"^regnet([xy])_(\d{3})$")


def _size_in_mf(name):
    """(family, size in MF) of a standard name such as "RegNetX-1.6GF", or None."""
    s = name.strip().lower()
    m = _PAPER_NAME.match(s)
    if m:
        family, whole, frac, unit = m.groups()
        value = Fraction(f"{whole}.{frac}" if frac else whole)
        return family, value * (1000 if unit == "gf" else 1)
    m = _TIMM_NAME.match(s)
    if m:
        return m.group(1), Fraction(int(m.group(2)), 10) * 1000
    return None


_BY_SIZE = {_size_in_mf(name): name for name in STANDARD_MODELS}


def canonical_name(name):
    """The paper's name ("RegNetY-400MF") for a standard model named in any common spelling:
    paper ("RegNetX-1.6GF"), torchvision ("regnet_x_1_6gf") or timm ("regnetx_016");
    case-insensitive."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    key = _size_in_mf(name)
    if key is None or key not in _BY_SIZE:
        raise ValueError(f"name: unknown RegNet model {name!r}; expected one of "
                         f"{', '.join(STANDARD_MODELS)} (or their torchvision/timm spellings)")
    return _BY_SIZE[key]


def regnet_spec(name=None, *, w0=None, wa=None, wm=None, depth=None, group_width=None,
                bottleneck_multiplier=1.0, se_ratio=None, rounding="pycls", num_classes=1000):
    """The AnyNetSpec of a standard model (by name) or of any generator parameters.

    With a name, the generator parameters come from STANDARD_MODELS; any also passed must agree
    (se_ratio too: 0 for a RegNetY is refused). Without one, se_ratio defaults to 0 (a RegNetX).
    ``rounding="torchvision"`` builds torchvision's architecture (it differs from pycls's for
    RegNetX-400MF, RegNetY-800MF, RegNetY-8.0GF, RegNetX-4.0GF and RegNetY-4.0GF).
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding: expected one of {ROUNDINGS}, got {rounding!r}")
    given = dict(w0=w0, wa=wa, wm=wm, depth=depth, group_width=group_width)
    if name is not None:
        label = canonical_name(name)
        params = STANDARD_MODELS[label]
        for key, value in [*given.items(), ("se_ratio", se_ratio)]:
            if value is not None and value != getattr(params, key):
                raise ValueError(f"{key}: {label} has {key}={getattr(params, key)}, got {value}; "
                                 "leave the name out to build a custom model")
        if bottleneck_multiplier != 1.0:
            raise ValueError(f"bottleneck_multiplier: {label} has 1.0, "
                             f"got {bottleneck_multiplier}; leave the name out to build a "
                             "custom model")
        given = {key: getattr(params, key) for key in given}
        se_ratio = params.se_ratio
    else:
        se_ratio = 0.0 if se_ratio is None else se_ratio
        missing = [key for key, value in given.items() if value is None]
        if missing:
            raise ValueError(f"{missing[0]}: required when no model name is given "
                             f"(need {', '.join(given)})")
        label = (f"RegNet{'Y' if se_ratio > 0 else 'X'}(w0={w0}, wa={wa}, wm={wm}, depth={depth}, "
                 f"g={group_width}, bm={bottleneck_multiplier}, se={se_ratio})")
    if not 0.0 <= se_ratio < 1.0:
        raise ValueError(f"se_ratio: expected 0 <= se_ratio < 1, got {se_ratio}")
    design = generate_regnet(given["w0"], given["wa"], given["wm"], given["depth"],
                             given["group_width"], bottleneck_multiplier, rounding=rounding)
    return design.to_spec(se_ratio=se_ratio, num_classes=num_classes, name=label)


def regnet(name=None, num_classes=1000, rounding="pycls", **params):
    """Builds a RegNet: a standard model by name ("RegNetY-400MF", "regnet_y_400mf",
    "regnety_004") or a custom one from generator parameters (w0, wa, wm, depth, group_width,
    bottleneck_multiplier, se_ratio). Returns an AnyNet with the reference initialisation."""
    return AnyNet(regnet_spec(name, num_classes=num_classes, rounding=rounding, **params))
