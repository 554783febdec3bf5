import pytest
import torch

from trainer.checkpoints import atomic_torch_save, load_selector_weights, map_lever_plus_keys
from trainer.errors import DataError
from trainer.model import PointerSelector


def lightning_v2(model: PointerSelector, *, old_names: bool = False) -> dict:
    """A Lever-Plus v2 Lightning checkpoint: prefixed keys beside frozen CLIP towers."""
    state = {}
    for key, value in model.state_dict().items():
        if old_names:  # the pre-2025-11-27 / v2format single-layer names
            key = key.replace("cross_attn_layers.0.", "cross_attn.").replace("attn_norms.0.", "attn_norm.")
        state[f"lever_lm.pointer_selector.{key}"] = value.clone()
    state["lever_lm.img_model.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(2, 2)
    state["lever_lm.sen_model.text_model.final_layer_norm.weight"] = torch.zeros(2)
    return {"epoch": 3, "state_dict": state, "hyper_parameters": {"lr": 1e-4}}


@pytest.fixture
def trained():
    torch.manual_seed(0)
    return PointerSelector(32, hidden_dim=16)


@pytest.mark.parametrize("old_names", [False, True])
def test_lever_plus_v2_checkpoint_loads_strictly(tmp_path, trained, old_names):
    torch.save(lightning_v2(trained, old_names=old_names), tmp_path / "v2.ckpt")
    fresh = PointerSelector(32, hidden_dim=16)
    load_selector_weights(fresh, tmp_path / "v2.ckpt")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.state_dict().items())


def test_our_checkpoint_and_v3_format_load(tmp_path, trained):
    atomic_torch_save({"model_state_dict": trained.state_dict(), "epoch": 1, "phase": "grpo"}, tmp_path / "a.pt")
    fresh = PointerSelector(32, hidden_dim=16)
    load_selector_weights(fresh, tmp_path / "a.pt")
    assert torch.equal(fresh.input_proj.weight, trained.input_proj.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary file left behind


def test_a_missing_key_is_an_error_not_a_silent_partial_load(tmp_path, trained):
    # the Lever-Plus converter bug: layer 0 renamed to names the model no longer has
    blob = lightning_v2(trained)
    blob["state_dict"] = {k.replace("cross_attn_layers.0.", "cross_attention."): v
                          for k, v in blob["state_dict"].items()}
    torch.save(blob, tmp_path / "bad.ckpt")
    with pytest.raises(DataError, match="missing: \\['cross_attn_layers.0.in_proj_bias'"):
        load_selector_weights(PointerSelector(32, hidden_dim=16), tmp_path / "bad.ckpt")


def test_shape_mismatch_names_the_field(tmp_path, trained):
    torch.save(lightning_v2(trained), tmp_path / "v2.ckpt")
    with pytest.raises(DataError, match="field input_proj.weight: shape"):
        load_selector_weights(PointerSelector(32, hidden_dim=8, num_heads=1), tmp_path / "v2.ckpt")


def test_pickle_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    # builtins.open(marker, "w") as a protocol-0 pickle, written by hand
    (tmp_path / "evil.ckpt").write_bytes(b"cbuiltins\nopen\n(V" + str(marker).encode() + b"\nVw\ntR.")
    with pytest.raises(DataError, match="refused"):
        load_selector_weights(PointerSelector(32, hidden_dim=16), tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_key_mapping_drops_clip_towers():
    mapped = map_lever_plus_keys({"lever_lm.pointer_selector.attn_norm.weight": 1,
                                  "lever_lm.sen_model.x": 2, "pointer_selector.query_proj.weight": 3})
    assert mapped == {"attn_norms.0.weight": 1, "query_proj.weight": 3}
