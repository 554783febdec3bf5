"""Readers for the Lever-Plus files: beam JSON, RL JSON, candidate pools (and embeddings).

Formats are those of reference/lever-plus.md §1. Every reader checks each field it
reads and fails with one :class:`DataError` line naming the file, the query id and
the field, so a bad file stops a sweep before any trial starts instead of turning
into a KeyError (or a silently wrong tensor) inside a worker.

Ids are row indices of the question_id-sorted train split; whether they fit the
embedding matrix is checked when the dataset is built (``trainer.data.build``),
where the number of rows is known.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from trainer.data.embeddings import check_embeddings, load_embeddings  # noqa: F401  (re-exported)
from trainer.errors import DataError

EVAL_MODES = ("vqaEval", "fallback", "error", "train", "val")  # "train"/"val": written by aug_diverse

_INT_KEY = re.compile(r"-?[0-9]+\Z")


@dataclass(frozen=True)
class BeamEntry:
    """One query of a beam JSON file.

    ``beams`` is [B][S]: each beam's ICD ids in prompt order (``id_list[b][:-1]``,
    the trailing query id removed); ``scores`` is [B], the InfoScore of each beam.
    """

    query_id: int
    beams: tuple[tuple[int, ...], ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class RLCandidate:
    """One scored ICD sequence of an RL JSON query.

    ``pointer`` holds global ids in prompt order whatever the file variant;
    ``local`` holds the k64 file's positions into the query's
    ``candidate_pool_ids`` (None otherwise). ``index`` is the position in the
    file's ``pointer_candidates`` list, so drops and errors can name it.
    """

    index: int
    pointer: tuple[int, ...]
    pointer_field: str               # the field ``pointer`` came from, for messages
    local: tuple[int, ...] | None
    vqa_acc_score: float
    vqa_correct: bool | None         # None: absent (VQAv2 "balanced" files)
    beam_score: float | None         # None: not a beam candidate
    logprob_score: float | None
    gen_method: str | None
    eval_failed: bool
    vqa_eval_mode: str | None

    @property
    def correct(self) -> bool:
        """vqa_correct, or acc > 0 where the file has none (Lever-Plus's definition)."""
        return self.vqa_correct if self.vqa_correct is not None else self.vqa_acc_score > 0


@dataclass(frozen=True)
class RLEntry:
    """One query of an RL JSON file; ``candidate_pool_ids`` only in the k64 variant."""

    query_id: int
    candidates: tuple[RLCandidate, ...]
    candidate_pool_ids: tuple[int, ...] | None


# ---------------------------------------------------------------------------
# JSON files


def load_beam_json(path: str | os.PathLike) -> dict[int, BeamEntry]:
    """Beam-search JSON: ``{"<query>": {"id_list": [[icd_n..icd_1, query], ...], "score_list": [...]}}``."""
    p = os.fspath(path)
    return parse_beam(_read_json(p), p)


def load_rl_json(path: str | os.PathLike) -> dict[int, RLEntry]:
    """RL JSON in any of the three variants (global pointers, k64 local pointers, VQAv2 balanced)."""
    p = os.fspath(path)
    return parse_rl(_read_json(p), p)


def load_pools(path: str | os.PathLike) -> dict[int, list[int]]:
    """Sampler candidate-set cache ``{"<anchor>": [train ids]}`` (usually 64 per anchor)."""
    p = os.fspath(path)
    return {qid: list(_id_seq(ids, f"{p}: query {qid}", min_len=1))
            for qid, ids in _query_items(_read_json(p), p, "a JSON object {anchor id: [candidate ids]}")}


def parse_beam(obj: Any, source: str) -> dict[int, BeamEntry]:
    """Validate an already-parsed beam JSON object; ``source`` names it in errors."""
    out: dict[int, BeamEntry] = {}
    shot: int | None = None
    for qid, entry in _query_items(obj, source, "a JSON object {query id: {id_list, score_list}}"):
        at = f"{source}: query {qid}"
        if not isinstance(entry, dict):
            raise DataError(f"{at}: expected an object with id_list and score_list, got {_show(entry)}")
        id_list = entry.get("id_list")
        if not isinstance(id_list, list) or not id_list:
            hint = ("; this looks like RL JSON (pointer_candidates), pass it as RL data"
                    if "pointer_candidates" in entry else "")
            raise DataError(f"{at}: id_list: expected a non-empty list of beams "
                            f"[icd_n, ..., icd_1, query], got {_show(id_list)}{hint}")
        beams = []
        for b, raw in enumerate(id_list):
            seq = _id_seq(raw, f"{at}: id_list[{b}]", min_len=2)
            if seq[-1] != qid:
                raise DataError(f"{at}: id_list[{b}]: last element {seq[-1]} must be the query id {qid}")
            if shot is None:
                shot = len(seq) - 1
            elif len(seq) - 1 != shot:
                raise DataError(f"{at}: id_list[{b}]: has {len(seq) - 1} ICDs but earlier beams have "
                                f"{shot}; shot_num must be the same across the file")
            beams.append(seq[:-1])
        scores = entry.get("score_list")
        if not isinstance(scores, list) or len(scores) != len(id_list):
            raise DataError(f"{at}: score_list: expected a list of {len(id_list)} numbers (one per "
                            f"beam in id_list), got {_show(scores)}")
        out[qid] = BeamEntry(qid, tuple(beams),
                             tuple(_finite(s, f"{at}: score_list[{b}]") for b, s in enumerate(scores)))
    return out


def parse_rl(obj: Any, source: str) -> dict[int, RLEntry]:
    """Validate an already-parsed RL JSON object; ``source`` names it in errors.

    A candidate's ``pointer`` is local into ``candidate_pool_ids`` exactly when the
    query has ``candidate_pool_ids`` and the candidate has ``pointer_global`` (the
    rule of Lever-Plus's dataset_v3); the two must agree. Otherwise ``pointer`` (or
    ``pointer_pos``) holds global ids.
    """
    out: dict[int, RLEntry] = {}
    shot: list[Any] = [None, ""]  # shot_num and where it was first seen
    for qid, entry in _query_items(obj, source, "a JSON object {query id: {pointer_candidates: [...]}}"):
        at = f"{source}: query {qid}"
        if not isinstance(entry, dict):
            raise DataError(f"{at}: expected an object with pointer_candidates, got {_show(entry)}")
        cands = entry.get("pointer_candidates")
        if not isinstance(cands, list):
            hint = "; this looks like beam JSON (id_list), pass it as beam data" if "id_list" in entry else ""
            raise DataError(f"{at}: pointer_candidates: expected a list of candidates, "
                            f"got {_show(cands)}{hint}")
        pool = entry.get("candidate_pool_ids")
        if pool is not None:
            pool = _id_seq(pool, f"{at}: candidate_pool_ids", min_len=1)
        parsed = tuple(_candidate(c, i, f"{at}: pointer_candidates[{i}]", pool, shot)
                       for i, c in enumerate(cands))
        out[qid] = RLEntry(qid, parsed, pool)
    return out


def rl_shot_num(entries: dict[int, RLEntry]) -> int | None:
    """Sequence length shared by every candidate (the loader enforces it); None if no candidates."""
    for entry in entries.values():
        for cand in entry.candidates:
            return len(cand.pointer)
    return None


def _candidate(c: Any, index: int, at: str, pool: tuple[int, ...] | None, shot: list[Any]) -> RLCandidate:
    if not isinstance(c, dict):
        raise DataError(f"{at}: expected a candidate object, got {_show(c)}")
    local = None
    if pool is not None and c.get("pointer_global") is not None:
        local = _id_seq(c.get("pointer"), f"{at}.pointer", min_len=1)
        pointer = _id_seq(c["pointer_global"], f"{at}.pointer_global", min_len=1)
        field = "pointer_global"
        if any(i >= len(pool) for i in local):
            raise DataError(f"{at}.pointer: local positions {list(local)} must be < {len(pool)}, the "
                            f"length of candidate_pool_ids")
        if tuple(pool[i] for i in local) != pointer:
            raise DataError(f"{at}.pointer_global: {list(pointer)} != candidate_pool_ids[pointer] = "
                            f"{[pool[i] for i in local]}; the file is inconsistent")
    elif c.get("pointer") is not None:
        pointer, field = _id_seq(c["pointer"], f"{at}.pointer", min_len=1), "pointer"
        pos = c.get("pointer_pos")
        if pos is not None and _id_seq(pos, f"{at}.pointer_pos", min_len=1) != pointer:
            raise DataError(f"{at}.pointer_pos: {pos} != pointer {list(pointer)}; both hold global ids "
                            f"in this format")
    elif c.get("pointer_pos") is not None:
        pointer, field = _id_seq(c["pointer_pos"], f"{at}.pointer_pos", min_len=1), "pointer_pos"
    else:
        raise DataError(f"{at}: missing pointer (the candidate's ICD ids)")
    if shot[0] is None:
        shot[0], shot[1] = len(pointer), at
    elif len(pointer) != shot[0]:
        raise DataError(f"{at}.{field}: has {len(pointer)} ids but {shot[1]} has {shot[0]}; "
                        f"shot_num must be the same across the file")
    acc = _finite(c.get("vqa_acc_score"), f"{at}.vqa_acc_score")
    if not 0.0 <= acc <= 1.0:
        raise DataError(f"{at}.vqa_acc_score: expected a VQA accuracy in [0, 1], got {acc!r}")
    return RLCandidate(
        index=index, pointer=pointer, pointer_field=field, local=local, vqa_acc_score=acc,
        vqa_correct=_flag01(c.get("vqa_correct"), f"{at}.vqa_correct"),
        beam_score=_optional_finite(c.get("beam_score"), f"{at}.beam_score"),
        logprob_score=_optional_finite(c.get("logprob_score"), f"{at}.logprob_score"),
        gen_method=_optional_str(c.get("gen_method"), f"{at}.gen_method"),
        eval_failed=_optional_bool(c.get("eval_failed"), f"{at}.eval_failed"),
        vqa_eval_mode=_optional_str(c.get("vqa_eval_mode"), f"{at}.vqa_eval_mode", EVAL_MODES),
    )


# ---------------------------------------------------------------------------
# Field checks (JSON gives exactly int/float/bool/str/None/list/dict, so type() is exact)


def _read_json(p: str) -> Any:
    with _open(p) as f:
        raw = f.read()
    if not raw or raw.isspace():
        raise DataError(f"{p}: file is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{p}: not UTF-8 text, so not a JSON file (is it a binary file?)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        cut = " (the file looks truncated)" if e.pos >= len(text.rstrip()) else ""
        raise DataError(f"{p}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}{cut}") from None
    except RecursionError:
        raise DataError(f"{p}: JSON nested too deeply to be a Lever-Plus file") from None


def _open(p: str) -> BinaryIO:
    try:
        return open(p, "rb")
    except FileNotFoundError:
        raise DataError(f"{p}: file not found; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, expected a file") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror})") from None


def _query_items(obj: Any, source: str, expected: str) -> Iterator[tuple[int, Any]]:
    """(query id, value) for every integer key, ascending; other keys ("_meta") are skipped."""
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected {expected}, got {_show(obj)} at the top level")
    items: dict[int, Any] = {}
    for key, value in obj.items():
        if not _INT_KEY.match(key):
            continue
        qid = int(key)
        if qid < 0:
            raise DataError(f"{source}: query {key}: query ids are train-set row indices, must be >= 0")
        if qid in items:
            raise DataError(f"{source}: query {key}: appears twice (as another spelling of {qid})")
        items[qid] = value
    if not items:
        raise DataError(f"{source}: no query entries (no integer keys); expected {expected}")
    return iter(sorted(items.items()))


def _id_seq(value: Any, at: str, *, min_len: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) < min_len:
        raise DataError(f"{at}: expected a list of at least {min_len} integer ids, got {_show(value)}")
    for x in value:
        if type(x) is not int or x < 0:
            raise DataError(f"{at}: expected non-negative integer ids, got {_show(x)} in {_show(value)}")
    return tuple(value)


def _finite(value: Any, at: str) -> float:
    try:
        number = float(value) if type(value) in (int, float) else math.nan
    except OverflowError:  # an integer literal beyond the float range
        number = math.nan
    if not math.isfinite(number):
        what = "missing" if value is None else f"got {_show(value)}"
        raise DataError(f"{at}: expected a finite number, {what}")
    return number


def _optional_finite(value: Any, at: str) -> float | None:
    return None if value is None else _finite(value, at)


def _flag01(value: Any, at: str) -> bool | None:
    if value is None or type(value) is bool or (type(value) in (int, float) and value in (0, 1)):
        return None if value is None else bool(value)
    raise DataError(f"{at}: expected 0, 1, true, false or null, got {_show(value)}")


def _optional_bool(value: Any, at: str) -> bool:
    if value is None or type(value) is bool:
        return bool(value)
    raise DataError(f"{at}: expected true, false or null, got {_show(value)}")


def _optional_str(value: Any, at: str, choices: tuple[str, ...] | None = None) -> str | None:
    if value is None or (type(value) is str and (choices is None or value in choices)):
        return value
    allowed = f"one of {', '.join(choices)}" if choices else "a string"
    raise DataError(f"{at}: expected {allowed} or null, got {_show(value)}")


def _show(value: Any) -> str:
    """A short one-line rendering of a JSON value for messages."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("nan", "NaN")
    if isinstance(value, (dict, list)) and len(value) > 6:
        return f"a {type(value).__name__} of {len(value)} items"
    text = "null (or missing)" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
