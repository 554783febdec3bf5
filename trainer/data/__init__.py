"""Lever-Plus data: loaders, filters and the tensors every stage trains on.

``load_dataset(embeddings=..., rl=..., beam=..., pools=..., data_cfg=...)`` returns
``(Dataset, SplitIds, DropReport)``. ``Dataset.rl`` holds training queries after
the selection filters *and* the validation/test queries (validity filters only),
so select the split you need: ``select_split(dataset.rl, split.train)``.
"""
from trainer.data.build import (SplitIds, build_dataset, candidate_pools, check_ids, load_dataset,
                                prepare_rl, select_split, split_ids, stack_pools)
from trainer.data.filters import DropReport, Dropped
from trainer.data.groups import Dataset, QueryGroups
from trainer.data.embeddings import check_embeddings, load_embeddings
from trainer.data.loaders import (BeamEntry, RLCandidate, RLEntry, load_beam_json, load_pools, load_rl_json,
                                  parse_beam, parse_rl, rl_shot_num)

__all__ = [
    "BeamEntry", "Dataset", "DropReport", "Dropped", "QueryGroups", "RLCandidate", "RLEntry", "SplitIds",
    "build_dataset", "candidate_pools", "check_embeddings", "check_ids", "load_beam_json", "load_dataset",
    "load_embeddings", "load_pools", "load_rl_json", "parse_beam", "parse_rl", "prepare_rl", "rl_shot_num",
    "select_split", "split_ids", "stack_pools",
]
