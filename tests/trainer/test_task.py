"""DataSource shipping: numpy columns that Ray shares between trials, and the same Task as before."""
import dataclasses
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import from_dict
from trainer.data import loaders
from trainer.simulator import SMOKE_SPEC
from trainer.task import DataSource, PackedBeam, PackedPools, PackedRL

FIXTURES = Path(__file__).parent / "data" / "fixtures"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return DataSource.from_simulator(SMOKE_SPEC, tmp_path_factory.mktemp("sim"))


@pytest.mark.parametrize("name", ["rl_global.json", "rl_k64.json", "rl_balanced.json"])
def test_packed_rl_equals_the_loaded_entries(name):
    rl = loaders.load_rl_json(FIXTURES / name)
    packed = pickle.loads(pickle.dumps(PackedRL.pack(rl)))
    assert isinstance(packed, PackedRL)
    assert list(packed) == sorted(rl) and len(packed) == len(rl)
    for qid, entry in rl.items():
        assert qid in packed and packed[qid] == entry
        for cand in packed[qid].candidates:  # python values, not numpy scalars (json, hashing, messages)
            assert type(cand.index) is int and all(type(i) is int for i in cand.pointer)
            assert type(cand.vqa_acc_score) is float and type(cand.eval_failed) is bool
    assert packed == rl and dict(packed) == rl
    missing = max(rl) + 1
    assert missing not in packed and "1" not in packed and packed.get(missing) is None
    with pytest.raises(KeyError):
        packed[missing]


def test_packed_beam_and_pools_equal_the_loaded_entries():
    beam = loaders.load_beam_json(FIXTURES / "beam.json")
    pools = loaders.load_pools(FIXTURES / "pools.json")
    assert pickle.loads(pickle.dumps(PackedBeam.pack(beam))) == beam
    packed_pools = pickle.loads(pickle.dumps(PackedPools.pack(pools)))
    assert packed_pools == pools and all(type(i) is int for p in packed_pools.values() for i in p)


def test_pickled_source_keeps_embeddings_out_of_band_and_entries_columnar(source):
    """Protocol 5 with a buffer callback is how Ray's object store gets zero-copy buffers."""
    buffers = []
    stream = pickle.dumps(source, protocol=5, buffer_callback=buffers.append)
    emb_bytes = source.embeddings.numel() * 4
    assert any(b.raw().nbytes == emb_bytes for b in buffers)
    # besides the simulator (its own tensors), the stream holds no per-candidate python objects
    data_only = pickle.dumps(dataclasses.replace(source, bench=None, prepared={}), protocol=5,
                             buffer_callback=lambda b: None)
    assert len(data_only) < 20_000 < sum(b.raw().nbytes for b in buffers)
    back = pickle.loads(stream, buffers=buffers)
    assert isinstance(back.rl, PackedRL) and isinstance(back.beam, PackedBeam) and isinstance(back.pools, PackedPools)
    assert torch.equal(back.embeddings, source.embeddings)
    assert back.rl == source.rl and back.beam == source.beam and back.pools == source.pools
    assert back.fingerprint == source.fingerprint and back.evaluator == source.evaluator


@pytest.mark.parametrize("data", [{}, {"train_queries": 40}, {"require_positive_query": True,
                                                              "filter_min_beam_score_quantile": 0.5}])
def test_shipped_source_builds_the_same_task(source, data):
    cfg = from_dict(data)
    shipped = pickle.loads(pickle.dumps(source))
    a, b = source.task(cfg), shipped.task(cfg)
    for field in ("query_ids", "pool", "pool_mask", "seqs", "seq_mask", "correct", "acc", "beam_score"):
        assert torch.equal(getattr(a.train, field), getattr(b.train, field)), field
        assert torch.equal(getattr(a.beam_train, field), getattr(b.beam_train, field)), field
    assert a.splits.keys() == b.splits.keys()
    for name in a.splits:
        assert torch.equal(a.splits[name].query_ids, b.splits[name].query_ids)
        assert torch.equal(a.splits[name].pool, b.splits[name].pool)
    seqs = b.splits["val"].pool[:, :2]
    assert torch.equal(a.evaluator.score(a.splits["val"].query_ids, seqs),
                       b.evaluator.score(b.splits["val"].query_ids, seqs))


def test_tensors_are_built_once_per_data_configuration_and_travel_built(source, monkeypatch):
    import trainer.task as task_module

    builds = []
    real = task_module.build_dataset
    monkeypatch.setattr(task_module, "build_dataset", lambda **kw: builds.append(kw["data_cfg"]) or real(**kw))
    fresh = dataclasses.replace(source, prepared={})
    base = from_dict({})
    a = fresh.task(base)
    b = fresh.task(base.replace(kl_beta=0.05, seed=3, hidden_dim=32))      # no data field differs
    assert len(builds) == 1 and b.train is a.train and b.model_cfg.hidden_dim == 32
    assert fresh.prepare([base, base.replace(train_queries=30), base.replace(train_queries=30, seed=1)]) == 2
    assert len(builds) == 2
    buffers: list = []
    stream = pickle.dumps(dataclasses.replace(fresh, bench=None), protocol=5, buffer_callback=buffers.append)
    assert len(stream) < 20_000    # the built tensors travel out of band too (store views, not copies)
    shipped = pickle.loads(stream, buffers=buffers)
    shipped.bench = source.bench
    small = shipped.task(base.replace(train_queries=30))
    assert len(builds) == 2 and small.train.num_queries == 30               # built in the driver, not here
    assert torch.equal(shipped.task(base).train.seqs, a.train.seqs)
    shipped.task(base.replace(require_positive_query=True))                 # not prepared: built on demand
    assert len(builds) == 3 and builds[-1].require_positive_query


def test_train_queries_still_subsample_after_shipping(source):
    shipped = pickle.loads(pickle.dumps(source))
    full, small = shipped.task(from_dict({})), shipped.task(from_dict({"train_queries": 30}))
    assert small.train.num_queries == 30 < full.train.num_queries


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    yield ray
    ray.shutdown()


def test_object_store_hands_every_reader_the_same_embedding_memory(ray_local, source):
    """Two reads of one ray.put share the buffer: no copy per trial, and no non-writable warning."""
    ref = ray_local.put(source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = ray_local.get(ref), ray_local.get(ref)
    assert not [w for w in caught if "not writable" in str(w.message)]
    assert first.embeddings.data_ptr() == second.embeddings.data_ptr() != source.embeddings.data_ptr()
    assert torch.equal(first.embeddings, source.embeddings)
    assert not first.rl.cols["pointer"].flags.writeable  # the columns are store views too
    assert np.shares_memory(first.rl.cols["pointer"], second.rl.cols["pointer"])


def test_trial_reads_the_shared_embeddings_inside_a_worker(ray_local, source):
    ref = ray_local.put(source)

    @ray_local.remote
    def rows(src, cfg_values):
        task = src.task(from_dict(cfg_values))
        return task.embeddings[:3].clone(), task.train.num_queries

    head, n_train = ray_local.get(rows.remote(ref, {"train_queries": 25}))
    assert torch.equal(head, source.embeddings[:3]) and n_train == 25
