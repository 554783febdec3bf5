"""The :class:`Space` data model and its trial forms: Tune param_space, Optuna space, preview.

How each entry becomes trials:

* ``grid`` is always enumerated (``tune.grid_search``); a scientific ``choice``
  is enumerated too under ``--search grid`` and drawn under ``random``.
  Presets are enumerated as the extra key ``preset``.
* Everything else is drawn ``num_samples`` times. Draw ``i`` of a key is a
  pure function of (rng_seed, i, key), carried in the trial config as
  ``nuisance_sample = i``: every seed of a configuration and every scientific
  value see the same nuisance draws. Seeds are therefore true repeats, and the
  scientific comparison is paired, and ``preview`` lists exactly what Tune runs.
* ``seed`` is ``tune.grid_search(range(seeds))``. With Optuna the searcher is
  wrapped in ``Repeater`` and ``resolve`` turns its ``__trial_index__`` into ``seed``.
* Under Optuna every dimension is sampled; grid and choice become categorical.

Seeds never reach the SFT checkpoint: it is trained once per sweep with the
base config. When :func:`sweep.spaces.shares_warmup` holds, the RCE warm-up is
shared the same way and seeds vary only the GRPO training after it (batch
order, dropout); otherwise each trial runs its own RCE from the shared SFT
weights with its seed. Shared warm-ups make seeds cheap and their spread a
clean measure of GRPO's variance, at the cost of not measuring warm-up variance.
"""
from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sweep.distributions import Dist
from trainer.config import field_default, from_dict
from trainer.errors import UserError

SAMPLE_KEY = "nuisance_sample"   # index of the nuisance draw in a Tune trial config
TRIAL_INDEX_KEY = "__trial_index__"  # set by ray.tune.search.Repeater
SEARCHES = ("grid", "random", "tpe", "qmc")


@dataclass
class Space:
    """A validated study. ``fixed`` holds constants; the swept sections hold :class:`Dist`."""

    name: str
    path: Path
    description: str
    seeds: int = 1
    num_samples: int = 1
    scientific: dict[str, Dist] = field(default_factory=dict)
    nuisance: dict[str, Dist] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    label: str = ""  # the path as errors show it

    # ---- what varies
    def scientific_keys(self) -> list[str]:
        return list(self.scientific) + (["preset"] if self.presets else [])

    def swept_keys(self) -> list[str]:
        return self.scientific_keys() + list(self.nuisance)

    def varies(self, key: str) -> bool:
        """Can ``key`` take more than one value in this sweep (any section or preset)?"""
        if key in self.scientific or key in self.nuisance:
            return True
        if key == "seed":
            return self.seeds > 1
        if key == "preset":
            return len(self.presets) > 1
        base = self.fixed.get(key, field_default(key))
        return len({repr(p.get(key, base)) for p in self.presets.values()}) > 1

    def values_of(self, key: str) -> list:
        """Representative values ``key`` takes across the sweep (for decisions such as warm-up sharing)."""
        dist = self.scientific.get(key) or self.nuisance.get(key)
        if dist is not None:
            return dist.representatives()
        base = self.fixed.get(key, field_default(key))
        return [p.get(key, base) for p in self.presets.values()] or [base]

    # ---- trials
    def to_tune(self, search: str = "grid", num_samples: int | None = None, seeds: int | None = None,
                rng_seed: int = 0) -> tuple[dict, int]:
        """``(param_space, num_samples)`` for ``tune.Tuner``.

        For ``grid``/``random`` every trial is enumerated by ``grid_search`` (num_samples is 1).
        For ``tpe``/``qmc`` the searcher owns the dimensions: param_space holds the constants and
        num_samples is the number of Tune trials (suggestions x seeds, as ``Repeater`` counts them).
        """
        from ray import tune

        search = _search(search)
        if search in ("tpe", "qmc"):
            return dict(self.fixed), self.trial_count(search, num_samples, seeds)
        enumerated, sampled = self._split(search)
        n = self._num_samples(search, num_samples)
        space: dict[str, Any] = dict(self.fixed)
        space.update({k: tune.grid_search(list(v)) for k, v in enumerated.items()})
        if sampled:
            space[SAMPLE_KEY] = tune.grid_search(list(range(n)))
            space.update({k: tune.sample_from(_Draw(k, d, rng_seed)) for k, d in sampled.items()})
        for key in self._preset_keys():
            space[key] = tune.sample_from(_PresetValue(key, self.presets))
        space["seed"] = tune.grid_search(list(range(self._seeds(seeds))))
        return space, 1

    def _preset_keys(self) -> list[str]:
        return [k for k in dict.fromkeys(k for p in self.presets.values() for k in p) if k not in self.fixed]

    def to_optuna(self, sampler: str = "tpe", seed: int = 0) -> dict:
        """Keyword arguments of ``OptunaSearch`` (all but ``metric``); mode is ``max``."""
        import optuna

        sampler = _search(sampler)
        if sampler == "tpe":
            ot_sampler = optuna.samplers.TPESampler(seed=seed)
        elif sampler == "qmc":
            try:
                import scipy  # noqa: F401  (Optuna's QMC sampler draws its sequence with scipy)
            except ImportError:
                raise UserError("--search optuna-qmc: needs scipy (pip install scipy); or use optuna-tpe"
                                ) from None
            # scrambled, so the seed matters; categorical dims are drawn at random by design
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ot_sampler = optuna.samplers.QMCSampler(seed=seed, scramble=True,
                                                        warn_independent_sampling=False)
        else:
            raise UserError(f"--search: Optuna sampler {sampler!r} is not one of tpe, qmc")
        dims = {k: d.to_optuna() for k, d in {**self.scientific, **self.nuisance}.items()}
        if self.presets:
            dims["preset"] = Dist("choice", tuple(self.presets)).to_optuna()
        return {"space": dims, "sampler": ot_sampler, "mode": "max"}

    def trial_count(self, search: str = "grid", num_samples: int | None = None,
                    seeds: int | None = None) -> int:
        """How many Tune trials ``to_tune`` (or the Optuna searcher with ``Repeater``) will run."""
        search = _search(search)
        enumerated, _ = self._split("grid" if search in ("tpe", "qmc") else search)
        points = int(np.prod([len(v) for v in enumerated.values()])) if enumerated else 1
        return points * self._num_samples(search, num_samples) * self._seeds(seeds)

    def preview(self, search: str = "grid", num_samples: int | None = None, seeds: int | None = None,
                rng_seed: int = 0) -> list[dict]:
        """The trial configs Tune will run, for ``--dry-run`` (Optuna: its first suggestions, seeded)."""
        search = _search(search)
        seeds = self._seeds(seeds)
        if search in ("tpe", "qmc"):
            return self._preview_optuna(search, num_samples, seeds, rng_seed)
        enumerated, sampled = self._split(search)
        draws = [{SAMPLE_KEY: i, **{k: _draw(k, d, rng_seed, i) for k, d in sampled.items()}}
                 for i in range(self._num_samples(search, num_samples))] if sampled else [{}]
        out = []
        for draw in draws:
            for point in _product(enumerated):
                out.extend({**self.fixed, **point, **draw, "seed": s} for s in range(seeds))
        return out

    def _preview_optuna(self, search: str, num_samples: int | None, seeds: int, rng_seed: int) -> list[dict]:
        import optuna

        kwargs = self.to_optuna(search, rng_seed)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line in a dry run
        try:
            study = optuna.create_study(direction="maximize", sampler=kwargs["sampler"])
            suggestions = [study.ask(kwargs["space"]).params
                           for _ in range(self.trial_count(search, num_samples, 1))]
        finally:
            optuna.logging.set_verbosity(verbosity)
        return [{**self.fixed, **params, "seed": s} for params in suggestions for s in range(seeds)]

    def resolve(self, trial_config: dict) -> dict:
        """The flat hyperparameters a trial trains with: fixed < preset < sampled values; passes from_dict."""
        config = dict(trial_config)
        preset = config.pop("preset", None)
        config.pop(SAMPLE_KEY, None)
        index = config.pop(TRIAL_INDEX_KEY, None)
        if index is not None:
            config.setdefault("seed", index)
        if preset is not None and preset not in self.presets:
            raise UserError(f"{self.label}: preset {preset!r} is not one of {', '.join(self.presets)}")
        out = {**self.fixed, **self.presets.get(preset, {}), **config}
        from_dict(out)
        return out

    def original_config(self) -> dict | None:
        """The tuning document's original configuration.

        The ``original`` preset when the space has one; otherwise the config
        defaults (which are the document's "current config") for every swept
        key, with the space's fixed values: the comparison marks that
        configuration as the original when the sweep ran it.
        """
        if "original" in self.presets:
            return self.resolve({"preset": "original"})
        if self.presets:
            return None
        from trainer.config import field_default

        return {**dict(self.fixed), **{k: field_default(k) for k in self.swept_keys()}}

    # ---- for the CLI
    def smoke(self) -> "Space":
        """The same study cut to at most two enumerated configurations and one draw (``--smoke-test``)."""
        enumerated, _ = self._split("grid")
        budget = 2
        keep: dict[str, tuple] = {}
        for key, values in enumerated.items():
            keep[key] = values[:budget]
            budget = max(1, budget // len(keep[key]))
        scientific, nuisance = ({k: Dist(d.kind, keep[k]) if k in keep else d for k, d in section.items()}
                                for section in (self.scientific, self.nuisance))
        presets = {k: v for k, v in self.presets.items() if k in keep.get("preset", ())}
        return replace(self, num_samples=1, scientific=scientific, nuisance=nuisance, presets=presets)

    def pbt_mutations(self) -> dict:
        """Tune domains of the continuous dimensions, for PBT's ``hyperparam_mutations``."""
        return {k: d.to_tune() for k, d in {**self.scientific, **self.nuisance}.items() if not d.categorical}

    def describe(self) -> dict:
        """A JSON-ready record of the study (written next to the results)."""
        return {"space": self.name, "path": str(self.path), "description": self.description,
                "seeds": self.seeds, "num_samples": self.num_samples,
                "scientific": {k: str(d) for k, d in self.scientific.items()},
                "nuisance": {k: str(d) for k, d in self.nuisance.items()},
                "fixed": dict(self.fixed), "presets": {k: dict(v) for k, v in self.presets.items()},
                "scientific_keys": self.scientific_keys(), "swept_keys": self.swept_keys(),
                "hyperparameters": list(dict.fromkeys([*self.swept_keys(), *self._preset_keys(), *self.fixed])),
                "search_ranges": {k: _range(d) for k, d in {**self.scientific, **self.nuisance}.items()},
                "original": self.original_config()}

    # ---- helpers
    def _split(self, search: str) -> tuple[dict[str, tuple], dict[str, Dist]]:
        enumerated: dict[str, tuple] = {}
        sampled: dict[str, Dist] = {}
        for section, dists in (("scientific", self.scientific), ("nuisance", self.nuisance)):
            for key, dist in dists.items():
                grid = dist.kind == "grid" or (dist.kind == "choice" and section == "scientific"
                                               and search == "grid")
                if grid:
                    enumerated[key] = dist.args
                else:
                    sampled[key] = dist
        if self.presets:
            enumerated["preset"] = tuple(self.presets)
        return enumerated, sampled

    def _num_samples(self, search: str, num_samples: int | None) -> int:
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 1):
            raise UserError(f"--num-samples: must be an integer >= 1, got {num_samples!r}")
        if search in ("grid", "random") and not self._split(search)[1]:
            if num_samples not in (None, 1):
                raise UserError(f"--num-samples: {self.label} samples nothing under --search {search} "
                                f"(every dimension is a grid); repeat configurations with --seeds instead")
            return 1
        return num_samples or self.num_samples

    def _seeds(self, seeds: int | None) -> int:
        if seeds is None:
            return self.seeds
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise UserError(f"--seeds: must be an integer >= 1, got {seeds!r}")
        return seeds


class _Draw:
    """``tune.sample_from`` callable: draw number ``config[SAMPLE_KEY]`` of one key (picklable)."""

    def __init__(self, key: str, dist: Dist, rng_seed: int):
        self.key, self.dist, self.rng_seed = key, dist, rng_seed

    def __call__(self, config: dict) -> Any:
        return _draw(self.key, self.dist, self.rng_seed, config[SAMPLE_KEY])


class _PresetValue:
    """``tune.sample_from`` callable: the value of ``key`` in the trial's preset (picklable).

    Puts each preset's hyperparameters into Tune's config, so params.json, the
    Tune table and the leaderboard show real values, not only the preset name.
    """

    def __init__(self, key: str, presets: dict):
        self.key, self.presets = key, presets

    def __call__(self, config: dict) -> Any:
        from trainer.config import field_default

        return self.presets[config["preset"]].get(self.key, field_default(self.key))


def _draw(key: str, dist: Dist, rng_seed: int, index: int) -> Any:
    if isinstance(rng_seed, bool) or not isinstance(rng_seed, int) or rng_seed < 0:
        raise UserError(f"--seed: must be an integer >= 0, got {rng_seed!r}")
    # crc32, not hash(): str hashes are salted per process, and Tune resolves in another one
    return dist.sample(np.random.default_rng([rng_seed, int(index), zlib.crc32(key.encode())]))


def _range(d: Dist) -> dict:
    if d.categorical:
        return {"kind": d.kind, "values": list(d.args)}
    return {"kind": d.kind, "low": d.args[0], "high": d.args[1]}


def _product(enumerated: dict[str, tuple]) -> list[dict]:
    points = [{}]
    for key, values in enumerated.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def _search(name: str) -> str:
    short = name.removeprefix("optuna-")
    if short not in SEARCHES:
        raise UserError(f"--search: {name!r} is not one of grid, random, optuna-tpe, optuna-qmc")
    return short
