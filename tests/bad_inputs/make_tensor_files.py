"""Writes the binary files of this corpus (run once; its outputs are committed next to it).

    python tests/bad_inputs/make_tensor_files.py

Each file is a tensor file gone wrong in one way. The pickle payload is not
here: tests/sweep/test_bad_inputs.py plants it at test time, so the repository
holds no file that would run code if loaded unsafely.
"""
import io
import os
import sys

import numpy as np
import torch

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def save(name: str, obj) -> None:
    torch.save(obj, os.path.join(HERE, name))


def main() -> int:
    g = torch.Generator().manual_seed(0)
    save("emb_1d.pt", torch.randn(16, generator=g))                      # [N] instead of [N, d]
    save("emb_3d.pt", torch.randn(4, 4, 8, generator=g))                 # [N, d, k]
    save("emb_int64.pt", torch.arange(32).reshape(8, 4))                 # integer dtype
    save("emb_zero_rows.pt", torch.zeros(0, 8))                          # no rows
    bad = torch.randn(8, 4, generator=g)
    bad[5, 2] = float("nan")
    save("emb_nan_row.pt", bad)                                          # a NaN in row 5
    save("emb_dict.pt", {"embeddings": torch.randn(8, 4, generator=g)})  # wrapped in a dict
    save("emb_numpy.pt", np.zeros((8, 4), dtype=np.float32))             # a numpy array (CLIP cache)
    buf = io.BytesIO()
    torch.save(torch.randn(64, 8, generator=g), buf)
    with open(os.path.join(HERE, "emb_truncated.pt"), "wb") as fh:        # cut in the middle
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    with open(os.path.join(HERE, "emb_text.pt"), "w") as fh:
        fh.write("query embeddings are in /data/okvqa/cache, ask Li\n")
    open(os.path.join(HERE, "emb_empty.pt"), "wb").close()
    save("sft_wrong_keys.pt", {"model_state_dict": {"encoder.weight": torch.zeros(4, 4)}})
    save("sft_tensor_only.pt", torch.zeros(4, 4))                         # weights without a state dict
    return 0


if __name__ == "__main__":
    sys.exit(main())
