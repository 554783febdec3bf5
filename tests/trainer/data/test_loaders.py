"""JSON loaders: the three RL variants, beam JSON, pools; every malformed input is a DataError."""
import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.data.loaders import load_beam_json, load_pools, load_rl_json, parse_beam, parse_rl, rl_shot_num
from trainer.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


def read(name):
    return json.loads((FIXTURES / name).read_text())


def write_json(path, obj):
    path.write_text(json.dumps(obj))  # allow_nan: NaN/Infinity are written as JS literals, as Python does
    return path


# ---------------------------------------------------------------------------
# Valid files


def test_rl_global_variant_fields():
    rl = load_rl_json(FIXTURES / "rl_global.json")
    assert sorted(rl) == [1, 2, 4, 6]  # "_meta" skipped
    assert rl_shot_num(rl) == 2
    c = rl[1].candidates
    assert [x.pointer for x in c] == [(3, 4), (5, 3), (6, 7), (8, 9), (10, 11)]
    assert all(x.local is None for x in c) and rl[1].candidate_pool_ids is None
    assert [x.beam_score for x in c] == [1.2, 0.9, None, None, None]
    assert [x.gen_method for x in c] == ["beam", "beam", "sample", "retrieval", "random"]
    assert [x.vqa_eval_mode for x in c] == ["vqaEval", "vqaEval", "vqaEval", "fallback", "vqaEval"]
    assert [x.eval_failed for x in c] == [False, False, False, False, True]
    assert [x.vqa_correct for x in c] == [True, True, False, False, True]
    assert c[0].logprob_score == -0.5 and c[2].logprob_score == -2.0
    aug = rl[6].candidates[2]  # no eval_failed field at all, eval mode written by aug_diverse
    assert (aug.eval_failed, aug.vqa_eval_mode, aug.index) == (False, "train", 2)


def test_rl_k64_variant_keeps_local_and_global_pointers():
    rl = load_rl_json(FIXTURES / "rl_k64.json")
    assert rl[3].candidate_pool_ids == (10, 11, 12, 13, 14, 15)
    assert [c.local for c in rl[3].candidates] == [(0, 2), (5, 1), (3, 4)]
    assert [c.pointer for c in rl[3].candidates] == [(10, 12), (15, 11), (13, 14)]
    assert [c.pointer for c in rl[5].candidates] == [(1, 7), (8, 9)]
    assert rl[3].candidates[0].pointer_field == "pointer_global"


def test_rl_balanced_variant_correct_is_acc_positive():
    rl = load_rl_json(FIXTURES / "rl_balanced.json")
    cands = rl[0].candidates
    assert all(c.vqa_correct is None and c.beam_score is None and c.gen_method is None for c in cands)
    assert [c.vqa_acc_score for c in cands] == [0.3, 0.0, 1.0, 0.0]
    assert [c.correct for c in cands] == [True, False, True, False]
    assert [c.correct for c in rl[8].candidates] == [True, False]


def test_beam_json_drops_query_and_keeps_prompt_order():
    beam = load_beam_json(FIXTURES / "beam.json")
    assert sorted(beam) == [3, 9]
    assert beam[3].beams == ((12, 10), (11, 10), (13, 15))
    assert beam[3].scores == (0.05, 0.04, 0.03)
    assert beam[9].scores == (-1e-07, -2e-07)


def test_pools():
    assert load_pools(FIXTURES / "pools.json") == {3: [10, 11, 12, 13, 14, 15, 16, 17], 9: [1, 2, 4, 5]}


# ---------------------------------------------------------------------------
# Broken files: every loader, every way a file can be unreadable


BROKEN_FILES = {
    "missing": (None, "file not found"),
    "empty": (b"", "empty"),
    "blank": (b"  \n\t", "empty"),
    "not_json": (b"id_list,score_list\n1,2\n", "not valid JSON"),
    "truncated": (b'{"1": {"id_list": [[3, 4, 1]], "score_l', "truncated"),
    "binary": (b"\x80\x04\x95\xff\x00", "not UTF-8"),
    "list_top": (b"[1, 2, 3]", "top level"),
    "only_meta": (b'{"_meta": {"created_at": "x"}}', "no query entries"),
}


@pytest.mark.parametrize("loader", [load_rl_json, load_beam_json, load_pools])
@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_unreadable_files_name_the_path(tmp_path, loader, case):
    content, words = BROKEN_FILES[case]
    path = tmp_path / f"{case}.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        loader(path)
    assert str(path) in str(err.value) and words in str(err.value)
    assert "\n" not in str(err.value)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(DataError, match="directory"):
        load_rl_json(tmp_path)


def _set(path, value):
    """A mutation that sets obj[path[0]][path[1]]... = value (None-valued path end deletes the key)."""
    def mutate(obj):
        node = obj
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return mutate


_DELETE = object()
C = "pointer_candidates"

RL_CASES = {
    # name: (fixture, mutation, words the message must contain)
    "pointer_length": ("rl_global.json", _set(["2", C, 1, "pointer"], [6, 8, 9]),
                       ["query 2", "pointer_candidates[1].pointer", "shot_num"]),
    "nan_reward": ("rl_global.json", _set(["1", C, 0, "vqa_acc_score"], math.nan),
                   ["query 1", "pointer_candidates[0].vqa_acc_score", "NaN"]),
    "string_reward": ("rl_global.json", _set(["6", C, 2, "vqa_acc_score"], "1.0"),
                      ["query 6", "pointer_candidates[2].vqa_acc_score", "'1.0'"]),
    "bool_reward": ("rl_global.json", _set(["6", C, 0, "vqa_acc_score"], True),
                    ["query 6", "pointer_candidates[0].vqa_acc_score"]),
    "missing_reward": ("rl_balanced.json", _set(["8", C, 1, "vqa_acc_score"], _DELETE),
                       ["query 8", "pointer_candidates[1].vqa_acc_score", "missing"]),
    "reward_above_1": ("rl_global.json", _set(["1", C, 1, "vqa_acc_score"], 1.5), ["[0, 1]", "query 1"]),
    "huge_int_reward": ("rl_global.json", _set(["1", C, 1, "vqa_acc_score"], 10 ** 400), ["vqa_acc_score"]),
    "correct_2": ("rl_global.json", _set(["1", C, 1, "vqa_correct"], 2),
                  ["pointer_candidates[1].vqa_correct"]),
    "inf_beam_score": ("rl_global.json", _set(["1", C, 0, "beam_score"], math.inf),
                       ["query 1", "pointer_candidates[0].beam_score", "inf"]),
    "string_beam_score": ("rl_k64.json", _set(["3", C, 0, "beam_score"], "high"),
                          ["query 3", "pointer_candidates[0].beam_score"]),
    "nan_logprob": ("rl_global.json", _set(["2", C, 0, "logprob_score"], math.nan),
                    ["query 2", "pointer_candidates[0].logprob_score"]),
    "eval_mode": ("rl_global.json", _set(["4", C, 0, "vqa_eval_mode"], "vqa"),
                  ["query 4", "vqa_eval_mode", "vqaEval"]),
    "eval_failed_str": ("rl_global.json", _set(["4", C, 0, "eval_failed"], "no"),
                        ["query 4", "pointer_candidates[0].eval_failed"]),
    "gen_method_int": ("rl_global.json", _set(["4", C, 0, "gen_method"], 3), ["gen_method"]),
    "float_id": ("rl_global.json", _set(["1", C, 0, "pointer"], [3.0, 4]), ["query 1", "pointer", "3.0"]),
    "negative_id": ("rl_balanced.json", _set(["0", C, 3, "pointer"], [2, -7]), ["query 0", "pointer", "-7"]),
    "missing_pointer": ("rl_balanced.json", _set(["0", C, 0, "pointer"], _DELETE),
                        ["query 0", "missing pointer"]),
    "pointer_pos_differs": ("rl_global.json", _set(["1", C, 0, "pointer_pos"], [4, 3]), ["pointer_pos"]),
    "local_out_of_pool": ("rl_k64.json", _set(["5", C, 1, "pointer"], [1, 4]),
                          ["query 5", "pointer_candidates[1].pointer", "candidate_pool_ids"]),
    "global_disagrees": ("rl_k64.json", _set(["3", C, 2, "pointer_global"], [13, 15]),
                         ["query 3", "pointer_candidates[2].pointer_global", "inconsistent"]),
    "pool_not_ids": ("rl_k64.json", _set(["3", "candidate_pool_ids"], "10-15"), ["candidate_pool_ids"]),
    "candidates_not_list": ("rl_global.json", _set(["6", C], {"0": {}}), ["query 6", "pointer_candidates"]),
    "candidate_not_object": ("rl_global.json", _set(["6", C, 1], [2, 3]), ["pointer_candidates[1]"]),
    "entry_not_object": ("rl_global.json", _set(["4"], [1, 2]), ["query 4"]),
    "negative_query": ("rl_global.json", _set(["-3"], {C: []}), ["query -3", ">= 0"]),
}


@pytest.mark.parametrize("case", sorted(RL_CASES))
def test_rl_field_errors_name_file_query_and_field(tmp_path, case):
    fixture, mutate, words = RL_CASES[case]
    obj = read(fixture)
    mutate(obj)
    path = write_json(tmp_path / "rl.json", obj)
    with pytest.raises(DataError) as err:
        load_rl_json(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    for word in words:
        assert word in msg


BEAM_CASES = {
    "last_not_query": (_set(["3", "id_list", 1], [11, 10, 4]), ["query 3", "id_list[1]", "query id 3"]),
    "shot_mismatch": (_set(["9", "id_list", 0], [5, 1, 2, 9]), ["query 9", "id_list[0]", "shot_num"]),
    "too_short": (_set(["9", "id_list"], [[9], [9]]), ["query 9", "id_list[0]"]),
    "empty_id_list": (_set(["9", "id_list"], []), ["query 9", "id_list"]),
    "scores_length": (_set(["3", "score_list"], [0.1, 0.2]), ["query 3", "score_list", "3 numbers"]),
    "nan_score": (_set(["3", "score_list", 2], math.nan), ["query 3", "score_list[2]", "NaN"]),
    "string_score": (_set(["9", "score_list", 0], "-1e-7"), ["query 9", "score_list[0]"]),
    "string_id": (_set(["3", "id_list", 0, 0], "12"), ["query 3", "id_list[0]"]),
}


@pytest.mark.parametrize("case", sorted(BEAM_CASES))
def test_beam_field_errors_name_file_query_and_field(tmp_path, case):
    mutate, words = BEAM_CASES[case]
    obj = read("beam.json")
    mutate(obj)
    path = write_json(tmp_path / "beam.json", obj)
    with pytest.raises(DataError) as err:
        load_beam_json(path)
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_pools_entry_errors(tmp_path):
    path = write_json(tmp_path / "pools.json", {"3": [10, "11"]})
    with pytest.raises(DataError, match=r"query 3.*'11'"):
        load_pools(path)


# ---------------------------------------------------------------------------
# Property: arbitrary JSON only ever raises DataError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2 ** 70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["0", "1", "3", "-2", "07", "_meta", "id_list", "score_list", C, "pointer",
                         "pointer_global", "candidate_pool_ids", "vqa_acc_score", "x"]), inner, max_size=4),
    max_leaves=20)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw):
    """A valid fixture with 1-3 edits: replace any value, delete a dict key, or delete a list item."""
    obj = copy.deepcopy(read(draw(st.sampled_from(["rl_global.json", "rl_k64.json", "rl_balanced.json",
                                                   "beam.json"]))))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "del_key", "del_item"]))
        paths = [p for p in _paths(obj) if p]
        if kind != "replace":
            parent_type = dict if kind == "del_key" else list
            paths = [p for p in paths if isinstance(_get(obj, p[:-1]), parent_type)]
        if not paths:
            continue
        depth = draw(st.sampled_from(sorted({len(p) for p in paths})))  # else deep leaves dominate
        path = draw(st.sampled_from([p for p in paths if len(p) == depth]))
        node = _get(obj, path[:-1])
        if kind == "replace":
            node[path[-1]] = draw(json_values)
        else:
            del node[path[-1]]
    return obj


def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


def _only_data_errors(path, obj):
    path.write_text(json.dumps(obj))
    for parse in (parse_rl, parse_beam):
        try:
            parse(obj, "x.json")
        except DataError:
            pass
    for load in (load_rl_json, load_beam_json, load_pools):
        try:
            load(path)
        except DataError:
            pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=json_values)
def test_random_json_raises_only_data_error(tmp_path_factory, obj):
    _only_data_errors(tmp_path_factory.getbasetemp() / "random.json", obj)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=mutated())
def test_mutated_files_raise_only_data_error(tmp_path_factory, obj):
    _only_data_errors(tmp_path_factory.getbasetemp() / "mutated.json", obj)
