"""Reading a search-space file and checking its values against the trainer's config.

Separate from ``sweep.spaces`` so the data model there reads in one sitting.
Every failure is a :class:`UserError` whose one line names the file, the
section.key and what would be valid.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trainer.config import from_dict, inactive_fields
from trainer.errors import ConfigError, UserError

# from_dict costs ~0.25 ms; this many joint checks keep loading a space well under 0.1 s.
_JOINT_LIMIT = 256


def read_yaml(path: Path, label: str) -> Any:
    """``yaml.safe_load`` plus a duplicate-key check (YAML silently keeps the last of two equal keys)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{label}: cannot read the search-space file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{label}: the search-space file is not UTF-8 text; save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes only: nothing is constructed
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{label}: YAML syntax error{at}: {problem}") from None
    _check_duplicates(node, label, "")
    return data


def _check_duplicates(node: Any, label: str, prefix: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise UserError(f"{label}: {prefix}{key}: appears twice (line {line}); YAML would keep "
                                    "only the last one, so remove one")
                seen.add(key)
            _check_duplicates(value_node, label, f"{prefix}{key}." if key is not None else prefix)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, label, prefix)


def _fail(label: str, where: dict[str, str], exc: ConfigError, default: str, extra: str = "") -> UserError:
    """Re-word a ConfigError ("kl_beta: must be ...") as "file: section.kl_beta: must be ..."."""
    msg = str(exc)
    key, sep, rest = msg.partition(": ")
    if sep and key in where:
        return UserError(f"{label}: {where[key]}: {rest}{extra}")
    return UserError(f"{label}: {default}: {msg}{extra}")


def check_values(space, where: dict[str, str]) -> None:
    """Type/range-check fixed values, presets and every representative swept value; refuse inert sweeps.

    ``where`` maps a hyperparameter to how the user wrote it (``"fixed.rce_lr"``,
    ``"--set rce_lr"``, ``"nuisance.grpo_lr"``) so errors point at the right line.
    """
    label = space.label
    try:
        from_dict(space.fixed)
    except ConfigError as exc:
        raise _fail(label, where, exc, "fixed") from None
    bases = [("", dict(space.fixed))]
    for name, preset in space.presets.items():
        try:
            from_dict({**space.fixed, **preset})
        except ConfigError as exc:
            pwhere = {k: f"presets.{name}.{k}" for k in preset}
            raise _fail(label, {**where, **pwhere}, exc, f"presets.{name}") from None
        bases.append((f" (in preset {name})", {**space.fixed, **preset}))
    if space.presets:
        bases = bases[1:]  # with presets, every trial runs one of them: the bare fixed dict never runs

    dims = {key: dist.representatives() for key, dist in {**space.scientific, **space.nuisance}.items()}
    for key, values in dims.items():
        for value in values:
            for ctx, base in bases:
                try:
                    from_dict({**base, key: value})
                except ConfigError as exc:
                    # name the swept value when the error is about another field (num_heads vs hidden_dim)
                    own = str(exc).startswith(f"{key}: ")
                    raise _fail(label, where, exc, where[key],
                                f" (with {where[key]}={value!r}{ctx})" if not own else ctx) from None
    _check_jointly(space, dims, bases, where)


def _combos(dims: dict[str, list], limit: int) -> list[dict]:
    """All combinations of representative values, or (for big spaces) each value once plus random ones."""
    keys = list(dims)
    total = int(np.prod([len(v) for v in dims.values()])) if dims else 1
    if total <= limit:
        return [dict(zip(keys, combo)) for combo in itertools.product(*dims.values())]
    first = {k: v[0] for k, v in dims.items()}
    out = [{**first, k: v} for k, values in dims.items() for v in values]
    rng = np.random.default_rng(0)  # fixed: loading a space must be deterministic
    while len(out) < limit:
        out.append({k: v[int(rng.integers(len(v)))] for k, v in dims.items()})
    return out


def _check_jointly(space, dims: dict[str, list], bases: list, where: dict[str, str]) -> None:
    """Cross-field checks (num_heads | hidden_dim, ...) and the inactive-hyperparameter refusal.

    A swept key is refused when it cannot change the computation in any checked
    combination: every trial would differ only in a number the trainer never reads.
    """
    active: set[str] = set()
    reasons: dict[str, str] = {}
    for combo in _combos(dims, max(16, _JOINT_LIMIT // len(bases))):
        for ctx, base in bases:
            try:
                cfg = from_dict({**base, **combo})
            except ConfigError as exc:
                others = ", ".join(f"{k}={v!r}" for k, v in combo.items())
                raise _fail(space.label, where, exc, "combination",
                            f" (when combined: {others}{ctx})") from None
            inactive = inactive_fields(cfg)
            for key in dims:
                if key in inactive:
                    reasons.setdefault(key, inactive[key])
                else:
                    active.add(key)
    for key in dims:
        if key not in active:
            cause = reasons[key]
            raise UserError(f"{space.label}: {where[key]}: sweeping {key} cannot change the computation "
                            f"when {cause} (every value would train the same model); remove {key} from "
                            f"the sweep or change {cause.split('=')[0]}")
