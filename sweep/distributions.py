"""One search-space entry: ``{grid: [..]}``, ``{loguniform: [low, high]}``, ...

A :class:`Dist` is parsed and checked against the hyperparameter it sweeps
(``parse_dist``), stands for its range in validation (``representatives``),
draws values reproducibly (``sample``) and converts to an Optuna distribution.
It knows nothing about files: callers pass ``where`` (``"search_spaces/x.yaml:
nuisance.grpo_lr"``) and every error is one line that starts with it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.config import field_default
from trainer.errors import UserError

KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")
_USAGE = {
    "grid": "grid: [v1, v2, ...] (every value is run)",
    "choice": "choice: [v1, v2, ...] (one value is drawn per sample)",
    "uniform": "uniform: [low, high]",
    "loguniform": "loguniform: [low, high] with 0 < low < high",
    "randint": "randint: [low, high] (integers, high exclusive)",
    "quniform": "quniform: [low, high, q] (multiples of q in [low, high])",
}
# Integer and quantised ranges up to this many points are validated point by point:
# one bad value inside (a top-k of 1, say) must not hide between two good ends.
_ENUM_LIMIT = 64
# PyYAML follows YAML 1.1, which reads 1e-5 and 1.0e5 as strings (it wants a dot and a
# signed exponent). Such strings are taken as the numbers every user means by them.
_EXP_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def coerce_number(key: str, value: Any) -> Any:
    """``"1e-5"`` -> ``1e-05`` when ``key`` is a numeric hyperparameter; anything else unchanged."""
    if isinstance(value, str) and type(field_default(key)) in (int, float) and _EXP_NUMBER.fullmatch(value):
        return float(value)
    return value


def is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


@dataclass(frozen=True)
class Dist:
    """A distribution over one hyperparameter; ``args`` as written in the YAML."""

    kind: str
    args: tuple

    @property
    def categorical(self) -> bool:
        return self.kind in ("grid", "choice")

    def __str__(self) -> str:
        return f"{self.kind}: [{', '.join(map(repr, self.args))}]"

    def representatives(self) -> list:
        """Values standing for the whole distribution when validating a space.

        Every grid/choice value, every point of a small integer/quantised range,
        otherwise both ends (randint's high end is exclusive, so ``high - 1``).
        """
        if self.categorical:
            return list(self.args)
        low, high = self.args[:2]
        if self.kind == "randint":
            return list(range(low, high)) if high - low <= _ENUM_LIMIT else [low, high - 1]
        if self.kind == "quniform":
            q = self.args[2]
            steps = round((high - low) / q)
            if steps <= _ENUM_LIMIT:
                return [self._cast(low + i * q) for i in range(steps + 1)]
            return [self._cast(low), self._cast(high)]
        return [low, high]

    def sample(self, rng: np.random.Generator) -> Any:
        """One draw as a plain Python value (what Tune will put in the trial config)."""
        if self.categorical:
            return self.args[int(rng.integers(len(self.args)))]
        low, high = self.args[:2]
        if self.kind == "uniform":
            return float(rng.uniform(low, high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        if self.kind == "randint":
            return int(rng.integers(low, high))
        q = self.args[2]
        steps = round((high - low) / q)
        return self._cast(low + int(rng.integers(steps + 1)) * q)

    def to_tune(self):
        """The equivalent Ray Tune domain (``grid`` as ``tune.grid_search``)."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        low, high = self.args[:2]
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        if self.kind == "randint":
            return tune.randint(low, high)
        return tune.quniform(low, high, self.args[2])

    def to_optuna(self):
        """The equivalent ``optuna.distributions`` object (grid and choice become categorical)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.categorical:
            return CategoricalDistribution(list(self.args))
        low, high = self.args[:2]
        if self.kind == "uniform":
            return FloatDistribution(low, high)
        if self.kind == "loguniform":
            return FloatDistribution(low, high, log=True)
        if self.kind == "randint":
            return IntDistribution(low, high - 1)
        if self._integral():
            return IntDistribution(int(low), int(high), step=int(self.args[2]))
        return FloatDistribution(low, high, step=self.args[2])

    def _integral(self) -> bool:
        return all(isinstance(a, int) and not isinstance(a, bool) for a in self.args)

    def _cast(self, value: float) -> Any:
        # round away float noise (0.1 * 3 = 0.30000000000000004) so values print and hash cleanly
        return int(round(value)) if self._integral() else round(value, 12)


def parse_dist(spec: Any, key: str, where: str) -> Dist:
    """Check one entry's structure and its fit to ``key``'s type; values are checked by the caller."""
    valid = "; valid: " + ", ".join(KINDS)
    if not isinstance(spec, dict) or len(spec) != 1:
        got = f"keys {', '.join(map(str, spec))}" if isinstance(spec, dict) else repr(spec)
        raise UserError(f"{where}: expected one distribution such as {{grid: [..]}} or "
                        f"{{loguniform: [low, high]}}, got {got}{valid}")
    (kind, args), = spec.items()
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), KINDS, n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"{where}: unknown distribution {kind!r}{hint}{valid}")
    usage = f"; write {_USAGE[kind]}"
    if not isinstance(args, list):
        raise UserError(f"{where}: {kind} needs a list, got {args!r}{usage}")
    args = [coerce_number(key, a) for a in args]
    want = type(field_default(key))
    if kind in ("grid", "choice"):
        _check_values(args, kind, where, usage)
        return Dist(kind, tuple(args))
    if want in (bool, str):
        raise UserError(f"{where}: {key} takes {'true/false' if want is bool else 'names'}; "
                        f"sweep it with grid or choice, not {kind}")
    arity = 3 if kind == "quniform" else 2
    if len(args) != arity or not all(_is_number(a) for a in args):
        raise UserError(f"{where}: {kind} needs {arity} finite numbers, got {args!r}{usage}")
    low, high = args[0], args[1]
    if not low < high:
        raise UserError(f"{where}: {kind} needs low < high, got low={low!r} high={high!r}{usage}")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}: loguniform needs low > 0 (a log scale has no 0), got {low!r}; "
                        "put 0 in a grid or choice instead")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise UserError(f"{where}: randint needs integer bounds, got {args!r}{usage}")
    if want is int and kind in ("uniform", "loguniform"):
        raise UserError(f"{where}: {key} is an integer; use randint: [low, high] or grid, not {kind}")
    if kind == "quniform":
        q = args[2]
        if q <= 0 or not (_multiple(high - low, q) and _multiple(low, q)):
            raise UserError(f"{where}: quniform needs q > 0 with low and high multiples of q, "
                            f"got {args!r}{usage}")
        if want is int and not all(float(a).is_integer() for a in args):
            raise UserError(f"{where}: {key} is an integer; quniform needs integer low, high and q")
        if want is int:
            args = [int(a) for a in args]
    return Dist(kind, tuple(args))


def _check_values(values: list, kind: str, where: str, usage: str) -> None:
    if not values:
        raise UserError(f"{where}: empty {kind} (nothing to run){usage}")
    seen: set = set()
    for v in values:
        if not is_scalar(v):
            raise UserError(f"{where}: {kind} values must be numbers, true/false or names, got {v!r}")
        tagged = (type(v) is bool, v)  # 1 == True in Python; they are different values here
        if tagged in seen:
            raise UserError(f"{where}: {kind} lists {v!r} twice (each value would run twice)")
        seen.add(tagged)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _multiple(x: float, q: float) -> bool:
    r = x / q
    return abs(r - round(r)) < 1e-9 * max(1.0, abs(r))
