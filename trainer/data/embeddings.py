"""The embedding matrix: ``[N, d]`` float tensors saved with ``torch.save`` (lever-plus.md §1.4).

Row i is train item i, for queries and candidates alike. Only ``weights_only``
loading is used, so a file cannot run code; the numpy CLIP caches of §1.3, which
that refuses, get a one-line command to re-save them as tensors.
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch

from trainer.errors import DataError

_ZIP_MAGIC = b"PK\x03\x04"
_FINITE_CHECK_ROWS = 1 << 16  # bounds the temporary bool tensor on 400k-row files


def load_embeddings(path: str | os.PathLike, *, mmap: bool = False) -> torch.Tensor:
    """The ``[N, d]`` float32 embedding matrix saved with ``torch.save``.

    Loads with ``weights_only=True`` only: a file whose pickle names anything but
    tensors is refused before any of it runs. ``mmap=True`` maps zip-format files
    (the ``torch.save`` default) instead of reading them, for 400k-row matrices.
    """
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        what = "file not found; check the path" if isinstance(e, FileNotFoundError) else f"cannot read ({e.strerror})"
        raise DataError(f"{p}: {what}") from None
    if not head:
        raise DataError(f"{p}: file is empty; expected a [N, d] float tensor saved with torch.save")
    try:
        obj = torch.load(p, weights_only=True, map_location="cpu", mmap=mmap and head == _ZIP_MAGIC)
    except Exception as e:  # torch raises many types for a bad file; all mean "not a tensor file"
        raise DataError(_refusal(p, e)) from e
    if isinstance(obj, np.ndarray):  # only reachable if the caller allow-listed numpy globals
        if obj.dtype.kind not in "fiu":
            raise DataError(f"{p}: expected a numeric [N, d] array, got dtype {obj.dtype}")
        obj = torch.from_numpy(obj)
    return check_embeddings(obj, p)


def check_embeddings(x: Any, p: str, *, finite: bool = True) -> torch.Tensor:
    """``x`` as float32 if it is a non-empty [N, d] float tensor, and finite unless ``finite=False``
    (a full pass over the data, which ``load_embeddings`` has already made); else DataError naming ``p``."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{p}: expected a [N, d] float tensor, got {type(x).__name__}; "
                        f"save the embedding matrix itself with torch.save(tensor, path)")
    if x.dim() != 2:
        raise DataError(f"{p}: expected a 2-D tensor [N, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise DataError(f"{p}: expected floating-point embeddings, got {x.dtype}; "
                        f"re-save them with tensor.float()")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{p}: embedding matrix is empty (shape {tuple(x.shape)})")
    for start in range(0, x.shape[0] if finite else 0, _FINITE_CHECK_ROWS):
        bad = ~torch.isfinite(x[start:start + _FINITE_CHECK_ROWS]).all(dim=1)
        if bad.any():
            row = start + int(bad.nonzero()[0, 0])
            raise DataError(f"{p}: row {row} holds NaN or inf; every embedding must be finite")
    return x if x.dtype == torch.float32 else x.float()


def _refusal(p: str, e: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found and found.group(1).startswith("numpy"):
        return (f"{p}: holds a numpy array, which torch.load(weights_only=True) refuses; if you trust "
                f"the file, re-save it as a tensor: python -c \"import numpy, torch; torch.save("
                f"torch.from_numpy(numpy.asarray(torch.load('{p}', weights_only=False))), '{p}.pt')\" "
                f"and pass {p}.pt")
    if found:
        return (f"{p}: refused: its pickle calls {found.group(1)}, which is not tensor data; "
                f"only tensors saved with torch.save(tensor, path) are loaded")
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f"{p}: not a tensor file saved with torch.save ({type(e).__name__}: {first})"
