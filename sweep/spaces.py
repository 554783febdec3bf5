"""Search spaces: ``search_spaces/<name>.yaml`` -> a validated :class:`Space` -> Ray Tune or Optuna.

A space file (keys are exactly the trainer's config field names)::

    description: what the study compares and which suggestion of the tuning document it encodes
    seeds: 3              # every configuration runs with seed 0..seeds-1
    num_samples: 8        # draws of the sampled dimensions (default 1)
    scientific:           # what the study compares
      kl_beta: {grid: [0, 0.05, 0.1, 0.2, 0.3]}
    nuisance:             # tuned away for a fair comparison
      grpo_lr: {loguniform: [5.0e-6, 5.0e-5]}
    fixed: {rce_epochs: 25}
    presets:              # optional: named full configurations compared side by side
      original: {rce_epochs: 25}

How entries become trials, and what seeds mean, is in ``sweep.space_model``.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from sweep.distributions import Dist, coerce_number, is_scalar, parse_dist
from sweep.space_checks import check_values, read_yaml
from sweep.space_model import SAMPLE_KEY, SEARCHES, TRIAL_INDEX_KEY, Space
from trainer.config import (DataConfig, ModelConfig, RCEConfig, RewardConfig, SFTConfig, field_names,
                            unknown_key_message)
from trainer.errors import UserError

__all__ = ["SPACES_DIR", "Dist", "Space", "SAMPLE_KEY", "SEARCHES", "TRIAL_INDEX_KEY", "list_spaces",
           "load_space", "parse_set", "shares_warmup", "shares_sft", "make_optuna_search"]

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
TOP_KEYS = ("description", "seeds", "num_samples", "scientific", "nuisance", "fixed", "presets")

# What the SFT checkpoint and the RCE warm-up read (trainer.loop.fit_sft, run_rce_epoch,
# RunState's per-stage optimiser and schedule). Data fields count in full: they choose the
# training queries both stages see. `seed` is deliberately absent: seeds repeat only the
# training after the shared warm-up (see sweep.space_model). GRPO, early stopping and
# evaluation fields never touch the warm-up weights.
SFT_FIELDS = tuple(ModelConfig.__dataclass_fields__) + tuple(SFTConfig.__dataclass_fields__) + tuple(
    DataConfig.__dataclass_fields__) + ("grad_clip",)
WARMUP_FIELDS = SFT_FIELDS + tuple(RCEConfig.__dataclass_fields__) + (
    "batch_size", "weight_decay", "lr_schedule", "warmup_ratio")
# RCE weights candidates by reward, so these matter only when some trial has rce_epochs > 0.
REWARD_FIELDS = tuple(RewardConfig.__dataclass_fields__)


# ---------------------------------------------------------------------------
# Loading


def list_spaces() -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped space, by name; a broken file says so instead."""
    out = []
    for path in sorted(SPACES_DIR.glob("*.yaml")):
        try:
            data = read_yaml(path, f"search_spaces/{path.name}")
            desc = data.get("description") if isinstance(data, dict) else None
        except UserError as exc:
            desc = f"(invalid: {exc})"
        out.append((path.stem, " ".join(str(desc).split()) if desc else "(no description)"))
    return out


def load_space(name_or_path: str | Path, overrides: dict | None = None) -> Space:
    """A shipped space by name, or a YAML file by path; ``overrides`` (from ``--set``) fix keys."""
    path, label = _locate(name_or_path)
    raw = read_yaml(path, label)
    if not isinstance(raw, dict):
        raise UserError(f"{label}: expected a mapping with keys {', '.join(TOP_KEYS)}, "
                        f"got {type(raw).__name__} {raw!r:.60}")
    for key in raw:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"{label}: {key}: unknown top-level key{hint}; valid: {', '.join(TOP_KEYS)}")
    desc = raw.get("description")
    if not isinstance(desc, str) or not desc.strip():
        raise UserError(f"{label}: description: missing or empty; say what the study compares and which "
                        "suggestion of the tuning document it encodes")
    sections = {s: _mapping(raw, s, label) for s in ("scientific", "nuisance", "fixed", "presets")}
    if not sections["scientific"] and not sections["presets"]:
        raise UserError(f"{label}: scientific: missing or empty; a study needs at least one compared "
                        "hyperparameter (or presets: named configurations)")
    where: dict[str, str] = {}
    for section in ("scientific", "nuisance", "fixed"):
        for key in sections[section]:
            _check_key(key, f"{label}: {section}.{key}")
            if key in where:
                first = where[key].split(".")[0]
                raise UserError(f"{label}: {section}.{key}: also in {first}; a hyperparameter has one role "
                                "(remove it from one section)")
            where[key] = f"{section}.{key}"
    presets = {}
    for name, preset in sections["presets"].items():
        if not isinstance(preset, dict) or not preset:
            raise UserError(f"{label}: presets.{name}: expected a mapping of hyperparameters, got {preset!r}")
        for key, value in preset.items():
            _check_key(key, f"{label}: presets.{name}.{key}")
            if key in sections["scientific"] or key in sections["nuisance"]:
                raise UserError(f"{label}: presets.{name}.{key}: also swept in {where[key]}; a preset fixes "
                                "its values (remove it from one place)")
        presets[str(name)] = {k: _scalar(k, v, f"{label}: presets.{name}.{k}") for k, v in preset.items()}
    fixed = {k: _scalar(k, v, f"{label}: fixed.{k}") for k, v in sections["fixed"].items()}
    swept = {s: {k: parse_dist(v, k, f"{label}: {s}.{k}") for k, v in sections[s].items()}
             for s in ("scientific", "nuisance")}
    for key, value in (overrides or {}).items():
        _check_key(key, f"--set {key}")
        for dists in (*swept.values(), *presets.values()):
            dists.pop(key, None)
        fixed[key] = _scalar(key, value, f"--set {key}")
        where[key] = f"--set {key}"
    space = Space(name=path.stem, path=path, description=" ".join(desc.split()),
                  seeds=_count(raw, "seeds", label), num_samples=_count(raw, "num_samples", label),
                  fixed=fixed, presets=presets, label=label, **swept)
    check_values(space, where)
    return space


def parse_set(items: list[str]) -> dict:
    """``["kl_beta=0.1", "adaptive_kl=false"]`` -> ``{"kl_beta": 0.1, "adaptive_kl": False}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item}: expected key=value, e.g. --set kl_beta=0.1")
        _check_key(key, f"--set {key}")
        if key in out:
            raise UserError(f"--set {key}: given twice ({out[key]!r} and {text!r}); keep one")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "not a YAML value"
            raise UserError(f"--set {key}: cannot parse {text!r} ({problem}); e.g. --set {key}=0.1") from None
        out[key] = _scalar(key, value, f"--set {key}")
    return out


def _locate(name_or_path: str | Path) -> tuple[Path, str]:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(text)
        if not path.is_file():
            raise UserError(f"{text}: no such search-space file; shipped spaces: {_names()}")
        inside = path.resolve().parent == SPACES_DIR
        return path, f"search_spaces/{path.name}" if inside else text
    path = SPACES_DIR / f"{text}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(text, [p.stem for p in SPACES_DIR.glob("*.yaml")], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"search_spaces/{text}.yaml: unknown search space {text!r}{hint}; valid: {_names()}; "
                        "or pass a path to your own YAML file")
    return path, f"search_spaces/{path.name}"


def _names() -> str:
    return ", ".join(p.stem for p in sorted(SPACES_DIR.glob("*.yaml")))


def _mapping(raw: dict, section: str, label: str) -> dict:
    value = raw.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{label}: {section}: expected a mapping of hyperparameter: ..., got {value!r:.60}")
    return value


def _check_key(key: Any, where: str) -> None:
    if key == "seed":
        raise UserError(f"{where}: seeds are not swept as a hyperparameter; set `seeds: N` at the top "
                        "level (or --seeds N) to run seed 0..N-1")
    if key == "preset":
        raise UserError(f"{where}: `preset` is generated from the presets: section; name presets there")
    if key not in field_names():
        raise UserError(f"{where}: {unknown_key_message(str(key))}")


def _scalar(key: str, value: Any, where: str) -> Any:
    value = coerce_number(key, value)
    if not is_scalar(value):
        raise UserError(f"{where}: expected one value (number, true/false or name), got {value!r}; "
                        "to sweep it, move it to scientific/nuisance with a distribution")
    return value


def _count(raw: dict, key: str, label: str) -> int:
    value = raw.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{label}: {key}: must be an integer >= 1, got {value!r}")
    return value


# ---------------------------------------------------------------------------
# What the tuner asks


def shares_warmup(space: Space) -> bool:
    """Can one RCE warm-up (and one SFT checkpoint) serve every trial of ``space``?

    True when no field in ``WARMUP_FIELDS`` varies, and no reward field varies
    while some trial runs RCE (its weights are rewards). ``seed`` does not count:
    seeds repeat only the post-warm-up training.
    """
    if any(space.varies(k) for k in WARMUP_FIELDS):
        return False
    runs_rce = any(int(v) > 0 for v in space.values_of("rce_epochs"))
    return not (runs_rce and any(space.varies(k) for k in REWARD_FIELDS))


def shares_sft(space: Space) -> bool:
    """Can one SFT checkpoint serve every trial? (No model, SFT or data field varies.)"""
    return not any(space.varies(k) for k in SFT_FIELDS)


def make_optuna_search(space: Space, sampler_name: str, metric: str, seed: int, seeds: int | None = None):
    """``OptunaSearch`` over ``space`` (mode max), wrapped in ``Repeater`` when there is more than one seed.

    ``Repeater`` runs each suggestion once per seed (``__trial_index__`` -> ``seed``
    in :meth:`Space.resolve`) and tells Optuna the mean; its docs advise against
    combining it with an early-stopping scheduler.
    """
    from sweep.search import PrunedAwareOptunaSearch, SeedRepeater

    search = PrunedAwareOptunaSearch(metric=metric, **space.to_optuna(sampler_name, seed))
    n = space._seeds(seeds)
    return SeedRepeater(search, repeat=n, set_index=True) if n > 1 else search

