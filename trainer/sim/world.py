"""The simulated world: items with hidden topic latents, seen only through noisy embeddings.

Every item i has a unit latent z_i (a mixture of topic clusters in ``latent_dim``
dimensions). The selector never sees z: it sees e_i = normalize(A (z_i + eta_i) + o +
eps_i), a fixed random lift to ``dim`` dimensions with latent noise eta (so cosine
retrieval confuses near topics), isotropic noise eps and a shared offset o (real CLIP
embeddings share a large common direction, which also lets a cosine-scoring pointer
express a per-item prior). The reader's hidden parameters (relevance map, per-item
helpfulness, per-query difficulty) live here too; ``oracle`` turns them into
P(correct).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from trainer.errors import ConfigError

# Bump when generation changes in a way the constants below do not capture; the
# cache key hashes the spec, these constants and this version.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class WorldConstants:
    """How the hidden world is drawn (not user knobs; part of the cache key)."""

    topic_spread: float = 0.55     # within-topic latent noise (relative to unit topic centres)
    topic_concentration: float = 2.0  # Dirichlet concentration of topic frequencies
    latent_noise: float = 0.6      # eta: latent-space noise that the embedding carries
    embed_noise: float = 0.6       # eps: isotropic noise norm in embedding space
    embed_offset: float = 0.8      # norm of the shared embedding direction o
    relevance_identity: float = 0.35 # M = a I + (1 - a) R: how much cosine similarity explains
    help_latent_std: float = 0.25  # helpfulness explained by the latent (learnable from e)
    help_item_std: float = 0.15    # idiosyncratic helpfulness (not recoverable from e)
    difficulty_std: float = 1.5    # per-query difficulty (logit units)


@dataclass(frozen=True)
class BenchmarkSpec:
    """Size and seed of one simulated benchmark; everything else is derived from it."""

    seed: int = 0
    n_items: int = 3000
    n_anchors: int = 800
    pool_size: int = 64
    dim: int = 512
    latent_dim: int = 16
    n_topics: int = 32
    beam_size: int = 5
    num_retrieval: int = 5
    eval_fraction: float = 0.3

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            want = type(f.default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    want is int and float(value) != int(value)):
                raise ConfigError(f"BenchmarkSpec.{f.name}: expected a number like {f.default!r}, "
                                  f"got {value!r}")
            object.__setattr__(self, f.name, want(value))
        _check_spec(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def n_eval(self) -> int:
        """Anchors held out for evaluation (the rest train)."""
        return max(1, int(round(self.eval_fraction * self.n_anchors)))


def _check_spec(s: BenchmarkSpec) -> None:
    def need(ok: bool, name: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"BenchmarkSpec.{name}: {msg}, got {getattr(s, name)!r}")

    need(0 <= s.seed < 2**31, "seed", "must be in [0, 2**31)")
    need(s.pool_size >= max(4, s.beam_size + 2), "pool_size",
         f"must be >= max(4, beam_size + 2) = {max(4, s.beam_size + 2)} (shots 1-4 and the beam)")
    need(s.n_items > s.pool_size, "n_items", f"must exceed pool_size={s.pool_size}")
    need(2 <= s.n_anchors <= s.n_items, "n_anchors", f"must be in [2, n_items={s.n_items}]")
    need(2 <= s.latent_dim <= 256, "latent_dim", "must be in [2, 256]")
    need(s.dim >= s.latent_dim, "dim", f"must be >= latent_dim={s.latent_dim}")
    need(1 <= s.n_topics <= s.n_items, "n_topics", "must be in [1, n_items]")
    need(1 <= s.beam_size <= 16, "beam_size", "must be in [1, 16]")
    need(0 <= s.num_retrieval <= s.pool_size // 2, "num_retrieval", "must be in [0, pool_size // 2]")
    need(0.0 < s.eval_fraction < 1.0, "eval_fraction", "must be in (0, 1)")
    need(s.n_eval < s.n_anchors, "eval_fraction", "leaves no training anchors")


@dataclass(eq=False)
class World:
    """The hidden state of the benchmark. Shapes: N items, L latent dims, d embedding dims."""

    latents: torch.Tensor      # [N, L] float64, unit rows
    topics: torch.Tensor       # [N] long
    embeddings: torch.Tensor   # [N, d] float32, unit rows (all the selector sees)
    relevance: torch.Tensor    # [L, L] float64, M in rel(q, c) = z_q^T M z_c
    helpfulness: torch.Tensor  # [N] float64, logit bonus of an item used as an ICD
    difficulty: torch.Tensor   # [N] float64, logit malus of an item asked as the query
    constants: WorldConstants = field(default_factory=WorldConstants)

    @property
    def n_items(self) -> int:
        return int(self.latents.shape[0])


def rng_for(spec: BenchmarkSpec, stream: str) -> np.random.Generator:
    """An independent generator per purpose, so adding draws to one stream never shifts another."""
    digest = hashlib.sha256(stream.encode()).digest()
    return np.random.default_rng([spec.seed, int.from_bytes(digest[:4], "little")])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def build_world(spec: BenchmarkSpec, constants: WorldConstants = WorldConstants()) -> World:
    """Draw the items, their embeddings and the reader's hidden parameters (deterministic)."""
    c, n, L, d = constants, spec.n_items, spec.latent_dim, spec.dim
    rng = rng_for(spec, "world")
    centres = _unit(rng.standard_normal((spec.n_topics, L)))
    freq = rng.dirichlet(np.full(spec.n_topics, c.topic_concentration))
    topics = rng.choice(spec.n_topics, size=n, p=freq)
    z = _unit(centres[topics] + c.topic_spread * rng.standard_normal((n, L)) / math.sqrt(L))

    # Observation: a random lift with orthonormal columns, so ||A x|| = ||x||.
    lift, _ = np.linalg.qr(rng.standard_normal((d, L)))
    observed = z + c.latent_noise * rng.standard_normal((n, L)) / math.sqrt(L)
    offset = c.embed_offset * _unit(rng.standard_normal(d))
    noise = c.embed_noise * rng.standard_normal((n, d)) / math.sqrt(d)
    emb = _unit(observed @ lift.T + offset + noise)

    # The hidden relevance map mixes identity (what cosine similarity sees) with a
    # random map that has the same spread over random pairs (what only a learned
    # selector can pick up): z^T G z' / sqrt(L) has the std of z^T z', 1/sqrt(L).
    a = c.relevance_identity
    mixing = a * np.eye(L) + (1 - a) * rng.standard_normal((L, L)) / math.sqrt(L)
    help_dir = _unit(rng.standard_normal(L))
    help_latent = z @ help_dir
    help_latent = (help_latent - help_latent.mean()) / help_latent.std()
    helpfulness = c.help_latent_std * help_latent + c.help_item_std * rng.standard_normal(n)
    difficulty = c.difficulty_std * rng.standard_normal(n)
    return World(
        latents=torch.from_numpy(z),
        topics=torch.from_numpy(topics.astype(np.int64)),
        embeddings=torch.from_numpy(emb.astype(np.float32)),
        relevance=torch.from_numpy(mixing),
        helpfulness=torch.from_numpy(helpfulness),
        difficulty=torch.from_numpy(difficulty),
        constants=constants,
    )


def cache_key(spec: BenchmarkSpec, *parts: object) -> str:
    """A short hash of the spec, the generator's constants and its version."""
    blob = {"version": GENERATOR_VERSION, "spec": spec.to_dict(),
            "parts": [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
