"""Fault models: a fault map as a pure function of (memories, fault model, rate, seed, map index).

Each map draws from its own generator, ``np.random.default_rng([seed, map_index, model code])``,
so map ``i`` is the same whether 10 or 10,000 maps are generated and on any executor
(docs/architecture.md, principle 5). Sampling is sparse: draw how many bits fail (binomial), then which
(without replacement). Nothing draws one random number per bit, so a 1e-6 rate on a large
network costs almost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mcel_train.errors import UserInputError
from mcel_train.faults.faultmap import FLIP, STUCK0, STUCK1, FaultMap
from mcel_train.memory import Memory

FAULT_MODELS = {"flip": 1, "asym": 2, "stuck": 3, "kflips": 4}
_PARAMS = {"flip": {}, "asym": {"p01": 0.0, "p10": 1.0}, "stuck": {}, "kflips": {}}


class FaultModelError(UserInputError):
    """Unknown fault model, bad parameter, or a rate outside what the model accepts."""


@dataclass(frozen=True)
class FaultModel:
    """A fault model by name with its parameters.

    - ``flip``: every stored bit flips independently with probability ``rate``.
    - ``asym``: a stored 1 flips to 0 with ``p10 * rate``, a stored 0 to 1 with ``p01 * rate``
      (defaults ``p10=1, p01=0``); needs the stored contents.
    - ``stuck``: every bit is stuck with probability ``rate``, at 0 or 1 with equal odds.
    - ``kflips``: exactly ``k = rate`` distinct bits flip (``rate`` is an integer count here).
    """

    name: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in FAULT_MODELS:
            raise FaultModelError(
                f"unknown fault model {self.name!r}; choose one of {', '.join(FAULT_MODELS)}"
            )
        unknown = set(self.params) - set(_PARAMS[self.name])
        if unknown:
            raise FaultModelError(
                f"fault model {self.name!r} has no parameter(s) {sorted(unknown)}"
            )
        for k, v in self.params.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise FaultModelError(f"fault model parameter {k} must be a finite number >= 0, got {v!r}")

    @classmethod
    def parse(cls, spec: str | FaultModel | Mapping) -> FaultModel:
        """``"flip"``, ``"asym:p01=0.1,p10=1"``, a mapping ``{name: asym, p01: 0.1}``, a model."""
        if isinstance(spec, FaultModel):
            return spec
        if isinstance(spec, Mapping):
            d = dict(spec)
            name = d.pop("name", d.pop("model", None))
            return cls(str(name), {k: float(v) for k, v in d.items()})
        name, _, rest = str(spec).partition(":")
        keys = [item.partition("=")[0].strip() for item in filter(None, rest.split(","))]
        repeated = [k for i, k in enumerate(keys) if k in keys[:i]]
        if repeated:  # the last value silently won
            raise FaultModelError(f"fault model parameter {repeated[0]!r} is given twice in {spec!r}; give it once")
        params = {}
        for item in filter(None, rest.split(",")):
            key, eq, val = item.partition("=")
            try:
                params[key.strip()] = float(val)
            except ValueError:
                eq = ""
            if not eq:
                raise FaultModelError(f"bad fault model parameter {item!r} in {spec!r} (want k=v)")
        return cls(name.strip(), params)

    def param(self, key: str) -> float:
        return float(self.params.get(key, _PARAMS[self.name][key]))

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))

    def to_dict(self) -> dict:
        return {"name": self.name, "params": dict(self.params), "spec": str(self)}


def rate_problem(rates: Sequence[float], fault_model: str | FaultModel) -> str | None:
    """What is wrong with ``rates`` for ``fault_model`` (``None``: nothing), before any map is
    made: bit error rates lie in [0, 1]; ``kflips`` takes whole flip counts instead (their upper
    bound, the memories' bit count, is checked by :func:`generate_map`); a rate given twice. Names
    no flag: the CLI and the make flow prefix their own."""
    fm = fault_model if isinstance(fault_model, FaultModel) else FaultModel.parse(fault_model)
    repeated = [r for k, r in enumerate(rates) if r in rates[:k]]
    if repeated:  # the same maps twice, then averaged as if they were independent samples
        return f"the rate {repeated[0]:g} is listed twice; give each rate once"
    if fm.name == "kflips":
        bad = [r for r in rates if not (math.isfinite(r) and r >= 0 and r == int(r))]  # NaN: not finite
        return f"the kflips fault model takes whole flip counts >= 0, got {bad[0]:g}" if bad else None
    bad = [r for r in rates if not 0.0 <= r <= 1.0]  # NaN fails both comparisons
    if bad:
        return f"bit error rates must be in [0, 1], got {bad[0]:g} (the kflips fault model takes flip counts)"
    if fm.name == "asym":  # each direction's probability is the rate times its factor
        for key in ("p10", "p01"):
            over = [r for r in rates if r * fm.param(key) > 1.0]
            if over:
                return (f"{fm}: rate x {key} must be at most 1, got {over[0]:g} x {fm.param(key):g}; "
                        f"lower the rates or {key}")
    return None


def _check_rate(rate: float, what: str = "rate") -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise FaultModelError(f"{what} must be in [0, 1], got {rate}")
    return rate


def stored_bits(memories: Sequence[Memory], contents: Mapping[str, np.ndarray]) -> np.ndarray:
    """All memories' bits, concatenated in global bit order (memory by memory, word-major)."""
    missing = [m.name for m in memories if m.name not in contents]
    if missing:
        raise FaultModelError(f"stored contents missing for memories {missing}")
    return np.concatenate([m.stored_bits(contents[m.name]).ravel() for m in memories])


def _positions_to_map(
    memories: Sequence[Memory], pos: np.ndarray, kind: np.ndarray, meta: dict
) -> FaultMap:
    order = np.argsort(pos, kind="stable")
    pos, kind = pos[order], kind[order]
    sizes = np.array([m.n_bits for m in memories], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    mem = np.searchsorted(starts, pos, side="right") - 1
    local = pos - starts[mem]
    widths = np.array([m.width for m in memories], dtype=np.int64)[mem]
    word, bit = np.divmod(local, widths)
    return FaultMap([m.name for m in memories], mem, word, bit, kind, meta)


def _sample(rng: np.random.Generator, population: int, p: float) -> np.ndarray:
    """Sparse Bernoulli(p) sample over ``population`` items: binomial count, then positions."""
    n = int(rng.binomial(population, p)) if population else 0
    return rng.choice(population, size=n, replace=False) if n else np.zeros(0, dtype=np.int64)


def generate_map(
    memories: Sequence[Memory],
    fault_model: str | FaultModel,
    rate: float,
    seed: int,
    map_index: int,
    contents: Mapping[str, np.ndarray] | None = None,
    bits: np.ndarray | None = None,
) -> FaultMap:
    """Fault map number ``map_index`` of a campaign; a pure function of its arguments.

    ``contents`` (name -> integer element matrix) or precomputed ``bits`` (from
    :func:`stored_bits`) are needed only by models that depend on the stored values (``asym``).
    """
    fm = FaultModel.parse(fault_model)
    if seed < 0 or map_index < 0:
        raise FaultModelError("seed and map_index must be non-negative integers")
    if not memories:
        raise FaultModelError("no memories to put faults in")
    rng = np.random.default_rng([int(seed), int(map_index), FAULT_MODELS[fm.name]])
    total = int(sum(m.n_bits for m in memories))
    meta = {"fault_model": str(fm), "rate": rate, "seed": int(seed), "map_index": int(map_index)}
    if fm.name == "kflips":
        k = float(rate)
        if k != int(k) or not 0 <= k <= total:
            raise FaultModelError(f"kflips needs an integer count 0..{total}, got {rate}")
        pos = rng.choice(total, size=int(k), replace=False) if k else np.zeros(0, np.int64)
        kind = np.full(pos.size, FLIP, dtype=np.int8)
    elif fm.name == "flip":
        pos = _sample(rng, total, _check_rate(rate))
        kind = np.full(pos.size, FLIP, dtype=np.int8)
    elif fm.name == "stuck":
        pos = _sample(rng, total, _check_rate(rate))
        kind = np.where(rng.integers(0, 2, size=pos.size) == 1, STUCK1, STUCK0).astype(np.int8)
    else:  # asym
        p10 = _check_rate(rate * fm.param("p10"), "rate * p10")
        p01 = _check_rate(rate * fm.param("p01"), "rate * p01")
        if bits is None:
            if contents is None:
                raise FaultModelError("the asym fault model needs the stored contents")
            bits = stored_bits(memories, contents)
        if bits.size != total:
            raise FaultModelError(f"stored bits have {bits.size} entries, memories {total}")
        ones = np.flatnonzero(bits)
        zeros = np.flatnonzero(bits == 0)
        pos = np.concatenate([ones[_sample(rng, ones.size, p10)],
                              zeros[_sample(rng, zeros.size, p01)]])
        kind = np.full(pos.size, FLIP, dtype=np.int8)
    return _positions_to_map(memories, np.asarray(pos, dtype=np.int64), kind, meta)
