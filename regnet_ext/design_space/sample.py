"""Rejection sampling of a design space under complexity budgets.

Complexity is analytic (regnet_ext.models.complexity), so no model is built: a RegNet sample of
hundreds of configurations in a narrow flop band takes seconds.
"""
import json
import math
from dataclasses import dataclass

import numpy as np

from ..models.complexity import (Complexity, block_complexity, head_complexity, output_size,
                                 stem_complexity)
from ..models.spec import AnyNetSpec, BlockSpec
from .records import read_input, write_records
from .spaces import DesignSpace, InvalidConfigError, get_space, spec_key

METRICS = ("flops", "params", "acts")
EARLY_STOP_ATTEMPTS = 20000


@dataclass(frozen=True, eq=False)
class Sample:
    """One configuration drawn from a space, its architecture and its complexity (at the
    resolution and class count it was sampled for)."""

    space: str
    config: dict
    spec: AnyNetSpec
    flops: int
    params: int
    acts: int

    @property
    def key(self):
        """Identifies the architecture: two samples with equal keys are the same network."""
        return json.dumps(spec_key(self.spec))

    def to_dict(self):
        return {"space": self.space, "config": self.config, "spec": spec_to_dict(self.spec),
                "flops": self.flops, "params": self.params, "acts": self.acts}

    @classmethod
    def from_dict(cls, record):
        try:
            return cls(space=record["space"], config=record["config"],
                       spec=spec_from_dict(record["spec"]), flops=int(record["flops"]),
                       params=int(record["params"]), acts=int(record["acts"]))
        except KeyError as e:
            raise ValueError(f"record: missing field {e} in a sample record") from None


def spec_to_dict(spec):
    return {"depths": list(spec.depths), "widths": list(spec.widths),
            "group_widths": list(spec.group_widths),
            "bottleneck_multipliers": list(spec.bottleneck_multipliers),
            "strides": list(spec.strides), "se_ratio": spec.se_ratio,
            "stem_width": spec.stem_width, "in_channels": spec.in_channels,
            "num_classes": spec.num_classes, "name": spec.name}


def spec_from_dict(d):
    return AnyNetSpec(**d)


def stagewise_complexity(spec, resolution=224):
    """``models.complexity.complexity(spec, resolution)``, computed per stage: a stage's blocks
    after its first are identical, so each stage costs two block evaluations instead of d_i
    (the rejection sampler evaluates tens of thousands of candidates)."""
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    h, w = resolution
    flops, params, acts = stem_complexity(spec, h, w)
    h, w = output_size(h, w, 2)
    w_in = spec.stem_width
    for stage, (d, width, bm, g, s) in enumerate(zip(spec.depths, spec.widths,
                                                     spec.bottleneck_multipliers,
                                                     spec.group_widths, spec.strides)):
        first = BlockSpec(stage, 0, w_in, width, s, bm, g, spec.se_ratio)
        f, p, a = block_complexity(first, h, w)
        flops, params, acts = flops + f, params + p, acts + a
        h, w = output_size(h, w, s)
        if d > 1:
            rest = BlockSpec(stage, 1, width, width, 1, bm, g, spec.se_ratio)
            f, p, a = block_complexity(rest, h, w)
            flops, params, acts = flops + f * (d - 1), params + p * (d - 1), acts + a * (d - 1)
        w_in = width
    f, p, a = head_complexity(spec)
    return Complexity(flops + f, params + p, acts + a)


def _band(name, band):
    if band is None:
        return None
    if not (isinstance(band, (tuple, list)) and len(band) == 2):
        raise ValueError(f"{name}: expected a (low, high) pair, got {band!r}")
    lo = 0 if band[0] is None else band[0]
    hi = math.inf if band[1] is None else band[1]
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 <= lo <= hi):
        raise ValueError(f"{name}: expected 0 <= low <= high, got {band!r}")
    return lo, hi


def sample(space, n, *, flops=None, params=None, acts=None, seed=0, resolution=224,
           num_classes=1000, max_attempts=None):
    """Draws ``n`` distinct configurations of ``space`` whose complexity lies in the given bands.

    space: a DesignSpace or a name from ``SPACES``. flops/params/acts: (low, high) bands, inclusive,
    in absolute units (flops are multiply-adds, e.g. ``flops=(360e6, 400e6)``), measured at
    ``resolution`` with ``num_classes`` outputs (the paper's regime is 224 and 1000). Duplicates
    (configurations giving the same architecture) are dropped. The result depends only on the
    arguments: the same seed gives the same list, and a smaller ``n`` gives a prefix of it.
    After ``max_attempts`` draws (default 1000 * n + 20000) without ``n`` accepted configurations,
    raises RuntimeError saying why draws were rejected; with the default, it also gives up as soon
    as the first 20000 draws have accepted nothing (the constraints are then all but impossible).
    """
    space = get_space(space) if not isinstance(space, DesignSpace) else space
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    bands = {m: _band(m, b) for m, b in zip(METRICS, (flops, params, acts)) if b is not None}
    sides = (resolution, resolution) if isinstance(resolution, (int, np.integer)) else resolution
    if not (isinstance(sides, (tuple, list)) and len(sides) == 2
            and all(isinstance(v, (int, np.integer)) and v >= 1 for v in sides)):
        raise ValueError(f"resolution: expected an integer >= 1 or a (height, width) pair of "
                         f"them, got {resolution!r}")
    patience = None
    if max_attempts is None:
        max_attempts, patience = 1000 * n + EARLY_STOP_ATTEMPTS, EARLY_STOP_ATTEMPTS
    if not (isinstance(max_attempts, (int, np.integer)) and max_attempts >= 1):
        raise ValueError(f"max_attempts: expected an integer >= 1, got {max_attempts!r}")
    rng = np.random.default_rng(seed)
    found, seen = [], set()
    rejected = {"outside the space": 0, "duplicate": 0, **{f"{m} out of band": 0 for m in bands}}
    attempts = 0
    while attempts < max_attempts and not (attempts == patience and not found):
        attempts += 1
        config = space.draw(rng)
        try:
            spec = space.to_spec(config, num_classes=num_classes)
        except InvalidConfigError:
            rejected["outside the space"] += 1
            continue
        key = spec_key(spec)
        if key in seen:
            rejected["duplicate"] += 1
            continue
        cx = stagewise_complexity(spec, resolution)._asdict()
        out = [m for m, (lo, hi) in bands.items() if not lo <= cx[m] <= hi]
        if out:
            rejected[f"{out[0]} out of band"] += 1
            continue
        seen.add(key)
        found.append(Sample(space=space.name, config=config, spec=spec, **cx))
        if len(found) == n:
            return found
    reasons = ", ".join(f"{v} {k}" for k, v in rejected.items() if v)
    raise RuntimeError(
        f"sample: found only {len(found)} of n={n} distinct configurations of {space.name} in "
        f"{attempts} attempts (rejected: {reasons}); bands={bands}. Widen the bands or the "
        f"space, lower n, or raise max_attempts.")


def save_samples(samples, path):
    """Writes samples as JSON Lines (one sample per line)."""
    write_records(path, [s.to_dict() for s in samples])


def load_samples(path):
    """Reads a file written by save_samples (or any JSONL of sample records, e.g. sweep results)."""
    return [Sample.from_dict(r) for r in read_input(path, "path", "sample records")]
