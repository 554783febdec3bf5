"""The SFT checkpoint and the RCE warm-up, computed once per sweep and cached by content hash.

Every trial starts from the same SFT weights. When no hyperparameter that the
RCE stage reads varies across the sweep, the RCE warm-up is run once here too
and trials start at GRPO: trial compute then goes to what the sweep compares.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from trainer.checkpoints import atomic_torch_save, load_selector_weights, safe_torch_load
from trainer.config import TrainConfig
from trainer.loop import fit_sft, train
from trainer.task import DataSource, WarmStart, config_hash

# What the SFT stage reads (besides the data): its result is reused when these match.
SFT_FIELDS = ("num_layers", "hidden_dim", "num_heads", "dropout", "attn_dropout", "label_smoothing",
              "sft_epochs", "sft_lr", "sft_batch_size", "grad_clip", "val_fraction", "test_fraction",
              "split_seed", "seed")


def sft_key(cfg: TrainConfig, source: DataSource, sft_ckpt: str | None = None) -> str:
    flat = cfg.to_dict()
    return config_hash({"data": source.fingerprint, "ckpt": sft_ckpt,
                        **{k: flat[k] for k in SFT_FIELDS}})


def rce_key(cfg: TrainConfig, source: DataSource, sft: str) -> str:
    """The RCE warm-up depends on everything but the GRPO stage and evaluation."""
    flat = cfg.to_dict()
    grpo = set(cfg.grpo.__dataclass_fields__) | set(cfg.eval.__dataclass_fields__) | {"device"}
    return config_hash({"data": source.fingerprint, "sft": sft,
                        **{k: v for k, v in flat.items() if k not in grpo}})


def prepare_warm_start(cfg: TrainConfig, source: DataSource, cache_dir: str | Path, *, share_rce: bool,
                       sft_ckpt: str | None = None, log: Callable[[str], None] = print) -> WarmStart:
    """SFT (trained, cached or loaded from ``sft_ckpt``) and, if ``share_rce``, the RCE warm-up."""
    cache_dir = Path(cache_dir)
    task = source.task(cfg)
    info: dict = {"sft_runs": 0, "rce_runs": 0}
    key = sft_key(cfg, source, sft_ckpt)
    path = cache_dir / f"sft-{key}.pt"
    if path.exists():
        sft_state = safe_torch_load(path, what="cached SFT checkpoint")["model_state_dict"]
        info["sft"] = f"cached {path}"
    elif sft_ckpt:
        model = task.new_model()
        load_selector_weights(model, sft_ckpt)
        sft_state = model.state_dict()
        info["sft"] = f"loaded {sft_ckpt}"
    else:
        log(f"SFT: training once for the whole sweep ({cfg.sft.sft_epochs} epochs)")
        sft_state = fit_sft(cfg, task, log=log)
        atomic_torch_save({"model_state_dict": sft_state, "config": cfg.to_dict()}, path)
        info.update(sft=f"trained {path}", sft_runs=1)
    rce_state = None
    if share_rce and cfg.rce.rce_epochs > 0:
        rpath = cache_dir / f"rce-{rce_key(cfg, source, key)}.pt"
        if rpath.exists():
            rce_state = safe_torch_load(rpath, what="cached RCE warm-up")["model_state_dict"]
            info["rce"] = f"cached {rpath}"
        else:
            log(f"RCE warm-up: running once for the whole sweep ({cfg.rce.rce_epochs} epochs)")
            def progress(m: dict, save) -> None:
                log(f"rce epoch {m['epoch']}/{cfg.rce.rce_epochs}: loss {m['rce_loss']:.4f}, "
                    f"val acc_mean {m['acc_mean']:.4f}")

            result = train(cfg.replace(grpo_epochs=0), task, progress, sft_state=sft_state)
            rce_state = result.final_state
            atomic_torch_save({"model_state_dict": rce_state, "config": cfg.to_dict()}, rpath)
            info.update(rce=f"computed {rpath}", rce_runs=1)
    return WarmStart(sft_state=sft_state, rce_state=rce_state, info=info)


_REPORT_SFT: dict = {}


def simulator_sft_sequences(bench, files, query_ids, k: int):
    """The simulator report's "sft" column: our SFT recipe on the benchmark's own training anchors.

    Trained once per benchmark (default config) on ``bench.train_query_ids()``
    only, since the report evaluates the benchmark's held-out anchors; returns
    [Q, k] global ids decoded greedily from each query's pool.
    """
    import torch

    from trainer.config import TrainConfig
    from trainer.data.build import build_dataset, select_split
    from trainer.evaluate import decode_sequences

    if bench.key not in _REPORT_SFT:
        cfg = TrainConfig()
        source = DataSource.from_files(embeddings=str(files.embeddings), rl=str(files.rl), beam=str(files.beam),
                                       pools=str(files.pools), evaluator="simulator", bench=bench)
        task = source.task(cfg)
        dataset, _, _ = build_dataset(embeddings=source.embeddings, rl=source.rl, beam=source.beam,
                                      pools=source.pools, data_cfg=cfg.data, check_finite=False)
        task.beam_train = select_split(dataset.beam, bench.train_query_ids())
        model = task.new_model()
        model.load_state_dict(fit_sft(cfg, task, log=lambda s: None))
        _REPORT_SFT[bench.key] = (model, task.embeddings)
    model, embeddings = _REPORT_SFT[bench.key]
    pool = torch.stack([bench.pool(int(q)) for q in query_ids])
    return decode_sequences(model, embeddings, query_ids, pool, torch.ones_like(pool, dtype=torch.bool), k)[k]
