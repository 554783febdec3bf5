"""Embedding loading: tensors only, weights_only, no code execution from a pickle payload."""
import pickletools
import zipfile

import numpy as np
import pytest
import torch

from trainer.data.embeddings import load_embeddings
from trainer.errors import DataError



def test_embeddings_roundtrip_float64_to_float32(tmp_path):
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.save(x, tmp_path / "e.pt")
    got = load_embeddings(tmp_path / "e.pt")
    assert got.dtype == torch.float32 and got.shape == (7, 5)
    torch.testing.assert_close(got, x.float())


def test_embeddings_mmap(tmp_path):
    x = torch.randn(9, 4)
    torch.save(x, tmp_path / "e.pt")
    torch.testing.assert_close(load_embeddings(tmp_path / "e.pt", mmap=True), x)
    # a legacy (non-zip) file cannot be mapped; it is read instead of failing
    torch.save(x, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.testing.assert_close(load_embeddings(tmp_path / "legacy.pt", mmap=True), x)


@pytest.mark.parametrize("obj, words", [
    (torch.zeros(6), "2-D"),
    (torch.zeros(2, 3, 4), "2-D"),
    (torch.zeros(4, 3, dtype=torch.long), "floating-point"),
    (torch.zeros(0, 3), "empty"),
    ({"emb": torch.zeros(2, 2)}, "got dict"),
    (torch.tensor([[0.0, 1.0], [0.0, float("nan")], [1.0, 1.0]]), "row 1"),
    (torch.tensor([[0.0, float("inf")]]), "row 0"),
])
def test_bad_embedding_tensors(tmp_path, obj, words):
    torch.save(obj, tmp_path / "e.pt")
    with pytest.raises(DataError) as err:
        load_embeddings(tmp_path / "e.pt")
    assert str(tmp_path / "e.pt") in str(err.value) and words in str(err.value)


def test_numpy_cache_is_refused_with_the_resave_command(tmp_path):
    # the CLIP feature caches are numpy arrays saved with torch.save
    torch.save(np.ones((3, 4), dtype=np.float32), tmp_path / "clip.pth")
    with pytest.raises(DataError) as err:
        load_embeddings(tmp_path / "clip.pth")
    msg = str(err.value)
    assert "numpy" in msg and "torch.from_numpy" in msg and str(tmp_path / "clip.pth") in msg
    assert "\n" not in msg


# builtins.open("<marker>", "w") as a protocol-0 pickle: what pickle.dump writes for an
# object whose __reduce__ returns (open, (marker, "w")). Hand-written so the tests never import pickle.
def _payload(marker):
    return b"cbuiltins\nopen\n(V" + str(marker).encode() + b"\nVw\ntR."


def test_payload_is_a_real_call(tmp_path):
    # guards the two tests below against a payload that would be harmless anyway
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(_payload(tmp_path / "m"))]
    assert ("GLOBAL", "builtins open") in ops and ops[-2][0] == "REDUCE"


def test_pickle_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "evil.pt").write_bytes(_payload(marker))
    with pytest.raises(DataError, match="refused"):
        load_embeddings(tmp_path / "evil.pt")
    assert not marker.exists()


def test_pickle_payload_inside_torch_zip_is_refused(tmp_path):
    marker = tmp_path / "marker"
    torch.save(torch.zeros(2, 2), tmp_path / "good.pt")
    with zipfile.ZipFile(tmp_path / "good.pt") as src, zipfile.ZipFile(tmp_path / "evil.pt", "w") as dst:
        for name in src.namelist():
            data = _payload(marker) if name.endswith("data.pkl") else src.read(name)
            dst.writestr(name, data)
    for mmap in (False, True):
        with pytest.raises(DataError, match="refused"):
            load_embeddings(tmp_path / "evil.pt", mmap=mmap)
    assert not marker.exists()


@pytest.mark.parametrize("content, words", [(None, "not found"), (b"", "empty"),
                                            (b"garbage bytes \x00\x01", "not a tensor file")])
def test_unreadable_embedding_files(tmp_path, content, words):
    path = tmp_path / "e.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_embeddings(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_numpy_array_accepted_when_the_caller_allowlists_numpy(tmp_path):
    torch.save(np.arange(6, dtype=np.float64).reshape(3, 2), tmp_path / "clip.pth")
    allowed = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.Float64DType]
    with torch.serialization.safe_globals(allowed):
        got = load_embeddings(tmp_path / "clip.pth")
    assert got.dtype == torch.float32 and got.tolist() == [[0, 1], [2, 3], [4, 5]]
