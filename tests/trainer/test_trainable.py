"""The trainable under a real two-trial Tuner (Ray local mode on 2 CPUs)."""
import json
import os

import pytest
import ray
import torch
from ray import tune

from tests.trainer.conftest import make_tiny_task
from trainer.loop import fit_sft
from trainer.task import WarmStart
from trainer.trainable import icd_trainable


class TinySource:
    """Duck-typed DataSource: builds the synthetic task for a config."""

    def task(self, cfg):
        return make_tiny_task(**{k: v for k, v in cfg.to_dict().items() if k in ("grpo_epochs",)})[1]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    yield
    ray.shutdown()


def test_two_trials_report_checkpoint_and_use_their_cpu_share(ray_local, tmp_path):
    cfg, task = make_tiny_task()
    warm = WarmStart(fit_sft(cfg, task, log=lambda s: None))
    base = {k: v for k, v in cfg.to_dict().items() if k in ("hidden_dim", "sft_epochs", "rce_epochs",
                                                              "grpo_epochs", "batch_size", "grpo_lr", "rce_lr")}
    trainable = tune.with_resources(tune.with_parameters(icd_trainable, source=TinySource(), warm=warm),
                                    {"cpu": 1})
    tuner = tune.Tuner(trainable, param_space={**base, "kl_beta": tune.grid_search([0.05, 0.3])},
                       tune_config=tune.TuneConfig(metric="acc_mean", mode="max"),
                       run_config=tune.RunConfig(name="two", storage_path=str(tmp_path), verbose=0))
    results = tuner.fit()
    assert len(results) == 2 and not results.errors
    for r in results:
        assert r.metrics["train_finished"] is True and r.metrics["grpo_epoch"] == 2
        assert r.metrics["torch_threads"] == 1
        assert r.metrics["training_iteration"] == 4  # 2 RCE + 2 GRPO epochs, one report each
        with r.checkpoint.as_directory() as d:
            evaluation = json.load(open(os.path.join(d, "evaluation.json")))
        assert set(evaluation["val"]["correct"]) == {"1", "2", "3", "4"}
    kl = sorted(r.metrics["kl_beta"] for r in results)
    assert kl[0] != kl[1]


def test_a_trial_with_a_gpu_share_trains_on_it():
    from trainer.trainable import set_threads_to_cpu_share, trial_device

    assert trial_device({"CPU": 1.0, "GPU": 0.25}, "cpu") == "cuda"      # --gpus-per-trial 0.25
    assert trial_device({"CPU": 1.0}, "cpu") == "cpu"
    assert trial_device({"CPU": 1.0, "GPU": 1.0}, "cuda:0") == "cuda:0"  # an explicit device is kept
    before = torch.get_num_threads()
    try:
        assert set_threads_to_cpu_share({"CPU": 3.0}) == 3 == torch.get_num_threads()
        assert set_threads_to_cpu_share({}) == 1 and set_threads_to_cpu_share({"CPU": 0.5}) == 1
    finally:
        torch.set_num_threads(before)
