"""Loading and saving selector weights: ours, and Lever-Plus v2 / v3 checkpoints.

Every load uses ``torch.load(..., weights_only=True)``: a checkpoint is data,
never code. Key mismatches are errors, never ``strict=False``: Lever-Plus's
converter renamed ``cross_attn_layers.0`` to ``cross_attn`` and a non-strict
load silently dropped the trained cross-attention at inference.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from trainer.errors import DataError

# Lever-Plus v2 Lightning checkpoints prefix the selector's keys; the frozen CLIP
# towers live beside it and are not ours.
_V2_PREFIXES = ("lever_lm.pointer_selector.", "pointer_selector.")
_FOREIGN_PREFIXES = ("lever_lm.sen_model.", "lever_lm.img_model.", "sen_model.", "img_model.")
# Pre-2025-11-27 checkpoints (and the v2format converter) used single-layer names.
_OLD_NAMES = (("cross_attn.", "cross_attn_layers.0."), ("attn_norm.", "attn_norms.0."))


def safe_torch_load(path: str | os.PathLike, *, what: str, mmap: bool = False) -> Any:
    """``torch.load`` with weights_only=True; every failure is a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: {what} file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise DataError(f"{path}: refused to load {what}: not a plain tensor file ({first[:160]})") from None
    except Exception as exc:  # corrupt zip, truncated file, wrong magic, ...
        raise DataError(f"{path}: cannot read {what}: {type(exc).__name__}: {str(exc)[:160]}") from None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def map_lever_plus_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Lever-Plus v2/v2format keys -> our un-prefixed names (CLIP tower keys dropped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_FOREIGN_PREFIXES):
            continue
        for prefix in _V2_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        for old, new in _OLD_NAMES:
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    return out


def load_selector_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load our ``.pt``, a Lever-Plus v3 ``.pt`` or a v2 Lightning ``.ckpt`` into ``model``, strictly.

    A missing or unexpected key, or a shape mismatch, raises DataError listing them.
    """
    blob = safe_torch_load(path, what="SFT checkpoint")
    if isinstance(blob, Mapping) and "model_state_dict" in blob:      # ours and Lever-Plus v3
        state = blob["model_state_dict"]
    elif isinstance(blob, Mapping) and "state_dict" in blob:          # Lightning v2 / v2format
        state = blob["state_dict"]
    elif isinstance(blob, Mapping) and all(isinstance(v, torch.Tensor) for v in blob.values()):
        state = blob
    else:
        raise DataError(f"{path}: field state_dict: no model_state_dict/state_dict mapping found")
    state = map_lever_plus_keys(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise DataError(f"{path}: state_dict keys do not match the selector (missing: {missing[:5]}, "
                        f"unexpected: {unexpected[:5]}); check num_layers/hidden_dim or the checkpoint version")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise DataError(f"{path}: field {key}: shape {tuple(value.shape)} != selector's "
                            f"{tuple(own[key].shape)}; check hidden_dim/num_layers and the embedding dim")
    model.load_state_dict(state, strict=True)
