"""Bad input of every kind, through the real CLI: exit code 2, one stderr line naming the file and
field (or the flag), no traceback, nothing under the output directory, no code of the input run.

The corpus is tests/bad_inputs/ (spaces/*.yaml, data/*; the .pt files come from
make_tensor_files.py there). Data cases replace one file of a complete, valid data set (the
smoke benchmark's files) and run for real, without --dry-run: validation must happen before
anything is written and before Ray starts. Pickle payloads are planted at test time.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.errors import UserError

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "bad_inputs"
SPACES, DATA = CORPUS / "spaces", CORPUS / "data"
PAYLOAD_MARKER = "PWNED_BY_PICKLE"


def cli(args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "sweep" / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_refused(result, out: Path, *fragments: str) -> None:
    """Exit 2, exactly one stderr line holding every fragment, no traceback, nothing written."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists(), f"created {sorted(p.name for p in out.rglob('*'))}"
    assert not list(out.parent.glob("PWNED*")), "the input ran code"


# ---------------------------------------------------------------------------
# search-space YAML

SPACE_CASES = {  # file -> what the one line must name besides the file
    "syntax_error.yaml": "line 3",
    "bad_indentation.yaml": "line 4",
    "unknown_key.yaml": "scientific.kl_betta",
    "unknown_section.yaml": "scientfic",
    "wrong_type_fixed.yaml": "fixed.batch_size",
    "wrong_type_grid.yaml": "scientific.batch_size",
    "negative_lr.yaml": "fixed.grpo_lr",
    "zero_lr_grid.yaml": "scientific.rce_lr",
    "empty_grid.yaml": "scientific.kl_beta",
    "loguniform_low_ge_high.yaml": "nuisance.grpo_lr",
    "loguniform_equal_bounds.yaml": "scientific.grpo_lr",
    "unknown_distribution.yaml": "gaussian",
    "not_a_mapping.yaml": "expected a mapping",
    "empty_file.yaml": "expected a mapping",
    "python_tag.yaml": "python/object/apply",
    "seeds_zero.yaml": "seeds",
    "duplicate_key.yaml": "scientific.kl_beta",
    "not_utf8.yaml": "UTF-8",
}
# sweep/space_checks.read_yaml catches OSError but not UnicodeDecodeError: a UTF-16 file ends in a traceback
KNOWN_BUGS: dict[str, str] = {}  # name -> reason, for cases a fix has not reached yet


def test_every_space_file_of_the_corpus_has_a_case():
    assert sorted(SPACE_CASES) == sorted(p.name for p in SPACES.glob("*.yaml"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[n]))
                                  if n in KNOWN_BUGS else n for n in sorted(SPACE_CASES)])
def test_bad_space_file(name, tmp_path):
    result = cli(["--space", str(SPACES / name), "--smoke-test", "--output", str(tmp_path / "out")], tmp_path)
    assert_refused(result, tmp_path / "out", name, SPACE_CASES[name])


# ---------------------------------------------------------------------------
# data files: (flag, corpus file or a special, what the line must name besides the file)

DATA_CASES = {
    "rl_missing": ("--rl-data", "missing", "--rl-data"),
    "rl_empty": ("--rl-data", "rl_empty.json", "empty"),
    "rl_not_json": ("--rl-data", "rl_not_json.json", "not valid JSON"),
    "rl_truncated": ("--rl-data", "rl_truncated.json", "truncated"),
    "rl_binary": ("--rl-data", "rl_binary.json", "UTF-8"),
    "rl_top_level_list": ("--rl-data", "rl_top_level_list.json", "top level"),
    "rl_beam_format": ("--rl-data", "rl_beam_format.json", "pointer_candidates"),
    "rl_missing_candidates": ("--rl-data", "rl_missing_candidates.json", "query 5: pointer_candidates"),
    "rl_wrong_pointer_length": ("--rl-data", "rl_wrong_pointer_length.json", "pointer_candidates[1].pointer"),
    "rl_pointer_not_list": ("--rl-data", "rl_pointer_not_list.json", "pointer_candidates[0].pointer"),
    "rl_negative_id": ("--rl-data", "rl_negative_id.json", "pointer_candidates[0].pointer"),
    "rl_local_pointer_outside_pool": ("--rl-data", "rl_local_pointer_outside_pool.json",
                                      "pointer_candidates[0].pointer"),
    "rl_id_beyond_rows": ("--rl-data", "rl_id_beyond_rows.json", "pointer_candidates[1].pointer"),
    "rl_nan_reward": ("--rl-data", "rl_nan_reward.json", "pointer_candidates[1].vqa_acc_score"),
    "rl_infinite_reward": ("--rl-data", "rl_infinite_reward.json", "vqa_acc_score"),
    "rl_string_reward": ("--rl-data", "rl_string_reward.json", "vqa_acc_score"),
    "rl_reward_out_of_range": ("--rl-data", "rl_reward_out_of_range.json", "vqa_acc_score"),
    "beam_score_count": ("--beam-data", "beam_score_count.json", "score_list"),
    "beam_last_not_query": ("--beam-data", "beam_last_not_query.json", "id_list[0]"),
    "beam_nan_score": ("--beam-data", "beam_nan_score.json", "score_list"),
    "pools_not_mapping": ("--pools", "pools_not_mapping.json", "top level"),
    "pools_string_ids": ("--pools", "pools_string_ids.json", "query 5"),
    "emb_empty": ("--embeddings", "emb_empty.pt", "empty"),
    "emb_text": ("--embeddings", "emb_text.pt", "emb_text.pt"),
    "emb_truncated": ("--embeddings", "emb_truncated.pt", "emb_truncated.pt"),
    "emb_1d": ("--embeddings", "emb_1d.pt", "shape (16,)"),
    "emb_3d": ("--embeddings", "emb_3d.pt", "shape (4, 4, 8)"),
    "emb_int64": ("--embeddings", "emb_int64.pt", "torch.int64"),
    "emb_zero_rows": ("--embeddings", "emb_zero_rows.pt", "empty"),
    "emb_nan_row": ("--embeddings", "emb_nan_row.pt", "row 5"),
    "emb_dict": ("--embeddings", "emb_dict.pt", "dict"),
    "emb_numpy": ("--embeddings", "emb_numpy.pt", "numpy"),
    "emb_pickle_payload": ("--embeddings", "payload", "refused"),
    "sft_missing": ("--sft-ckpt", "missing", "--sft-ckpt"),
    "sft_wrong_keys": ("--sft-ckpt", "sft_wrong_keys.pt", "state_dict keys"),
    "sft_tensor_only": ("--sft-ckpt", "sft_tensor_only.pt", "state_dict"),
    "sft_pickle_payload": ("--sft-ckpt", "payload", "refused"),
    "sft_zip_payload": ("--sft-ckpt", "payload-zip", "refused"),
}


# one case per file kind and failure family in the default suite; every case with -m slow
# (each is a fresh interpreter importing torch: about 3 s of CPU)
DEFAULT_DATA = {"rl_missing", "rl_truncated", "rl_nan_reward", "rl_wrong_pointer_length", "rl_id_beyond_rows",
                "beam_score_count", "pools_not_mapping", "emb_3d", "emb_numpy", "emb_pickle_payload",
                "sft_zip_payload"}


def test_every_data_file_of_the_corpus_has_a_case():
    used = {case[1] for case in DATA_CASES.values()}
    assert {p.name for p in DATA.iterdir()} == used - {"missing", "payload", "payload-zip"}


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, Path]:
    """A complete, valid data set (the smoke benchmark's files) that each case spoils one file of."""
    from trainer.simulator import SMOKE_SPEC, ensure_files

    files = ensure_files(SMOKE_SPEC, tmp_path_factory.mktemp("valid"))
    return {"--rl-data": files.rl, "--beam-data": files.beam, "--pools": files.pools,
            "--embeddings": files.embeddings}


def pickle_payload(marker: str) -> bytes:
    """builtins.open(marker, "w") as a protocol-0 pickle (hand-written: this module never imports pickle)."""
    return b"cbuiltins\nopen\n(V" + marker.encode() + b"\nVw\ntR."


def zipped_payload(path: Path, marker: str) -> None:
    """A torch.save zip whose data.pkl is the payload: what a tampered checkpoint looks like."""
    import zipfile

    import torch

    torch.save({"model_state_dict": {"w": torch.zeros(2)}}, path.with_suffix(".good"))
    with zipfile.ZipFile(path.with_suffix(".good")) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, pickle_payload(marker) if name.endswith("data.pkl") else src.read(name))
    path.with_suffix(".good").unlink()


def test_the_planted_payload_is_a_real_call(tmp_path):
    import pickletools

    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pickle_payload("m"))]
    assert ("GLOBAL", "builtins open") in ops and ops[-2][0] == "REDUCE"


@pytest.mark.parametrize("case", [c if c in DEFAULT_DATA else pytest.param(c, marks=pytest.mark.slow)
                                  for c in sorted(DATA_CASES)])
def test_bad_data_file(case, valid_files, tmp_path):
    flag, name, fragment = DATA_CASES[case]
    if name == "missing":
        path = tmp_path / "no_such_file.json"
    elif name == "payload":
        path = tmp_path / "payload.pt"
        path.write_bytes(pickle_payload(PAYLOAD_MARKER))  # relative: would land in the CLI's cwd, tmp_path
    elif name == "payload-zip":
        path = tmp_path / "payload.ckpt"
        zipped_payload(path, PAYLOAD_MARKER)
    else:
        path = DATA / name
    files = {**valid_files, flag: path}
    args = ["--space", "kl_beta", "--output", str(tmp_path / "out")]
    for f, p in files.items():
        args += [f, str(p)]
    result = cli(args, tmp_path)
    assert_refused(result, tmp_path / "out", path.name, fragment)


# ---------------------------------------------------------------------------
# flags

CLI_CASES = {
    "no_space": ([], "--space"),
    "unknown_space_name": (["--space", "kl_betaa"], "kl_betaa"),
    "unknown_flag": (["--space", "kl_beta", "--learning-rate", "1"], "--learning-rate"),
    "bad_choice": (["--space", "kl_beta", "--scheduler", "hyperband"], "--scheduler"),
    "not_an_int": (["--space", "kl_beta", "--seeds", "two"], "--seeds"),
    "zero_seeds": (["--space", "kl_beta", "--seeds", "0"], "--seeds"),
    "bad_metric": (["--space", "kl_beta", "--metric", "acc_shot9"], "--metric"),
    "set_without_equals": (["--space", "kl_beta", "--set", "kl_beta"], "--set kl_beta"),
    "set_unknown_key": (["--space", "kl_beta", "--set", "kl_bta=0.1"], "kl_bta"),
    "set_negative_lr": (["--space", "kl_beta", "--set", "rce_lr=-1"], "rce_lr"),
    "set_unparsable": (["--space", "kl_beta", "--set", "kl_beta=[0.1"], "--set kl_beta"),
    "set_twice": (["--space", "kl_beta", "--set", "kl_beta=0.1", "--set", "kl_beta=0.2"], "--set kl_beta"),
    "name_traversal": (["--space", "kl_beta", "--name", "../escape"], "--name"),
    "name_separator": (["--space", "kl_beta", "--name", "a/b"], "--name"),
    "name_hidden": (["--space", "kl_beta", "--name", ".hidden"], "--name"),
    "resume_traversal": (["--resume", "../../etc"], "--resume"),
    "resume_missing": (["--resume", "never-ran"], "--resume"),
    "resume_with_space": (["--resume", "x", "--space", "kl_beta"], "--resume"),
    "resume_with_seed": (["--resume", "x", "--seed", "3"], "--seed"),
    "resume_with_smoke": (["--resume", "x", "--smoke-test"], "--smoke-test"),
    "dry_run_resume": (["--resume", "x", "--dry-run"], "--dry-run"),
    "dashboard_and_address": (["--space", "kl_beta", "--dashboard", "--address", "127.0.0.1:6379"],
                              "--dashboard"),
    "dashboard_host_alone": (["--space", "kl_beta", "--dashboard-host", "0.0.0.0"], "--dashboard-host"),
    "dashboard_host_not_ip": (["--space", "kl_beta", "--dashboard", "--dashboard-host", "my laptop"],
                              "--dashboard-host"),
    "dashboard_port_range": (["--space", "kl_beta", "--dashboard", "--dashboard-port", "70000"],
                             "--dashboard-port"),
    "max_failures": (["--space", "kl_beta", "--max-failures", "-2"], "--max-failures"),
    "cpus_zero": (["--space", "kl_beta", "--cpus-per-trial", "0"], "--cpus-per-trial"),
    "grace_beyond_budget": (["--space", "kl_beta", "--grace-period", "99"], "--grace-period"),
    "reduction_factor": (["--space", "kl_beta", "--reduction-factor", "1"], "--reduction-factor"),
    "pbt_without_ranges": (["--space", "kl_beta", "--scheduler", "pbt", "--search", "random"],
                           "--scheduler pbt"),
    "sha_with_optuna": (["--space", "lr", "--scheduler", "sha", "--search", "optuna-tpe"], "--scheduler sha"),
    "sha_with_max_concurrent": (["--space", "kl_beta", "--scheduler", "sha", "--max-concurrent", "2"],
                                "--scheduler sha"),
    "smoke_with_data": (["--space", "kl_beta", "--smoke-test", "--rl-data", "r.json", "--embeddings", "e.pt"],
                        "--smoke-test"),
    "rl_without_embeddings": (["--space", "kl_beta", "--rl-data", "r.json"], "--embeddings"),
    "embeddings_alone": (["--space", "kl_beta", "--embeddings", "e.pt"], "--rl-data"),
    "evaluator_on_benchmark": (["--space", "kl_beta", "--evaluator", "lookup"], "--evaluator"),
    "evaluator_simulator_with_data": (["--space", "kl_beta", "--evaluator", "simulator",
                                       "--rl-data", "r.json", "--embeddings", "e.pt"], "--evaluator"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_flags(case, tmp_path):
    args, fragment = CLI_CASES[case]
    result = cli([*args, "--output", str(tmp_path / "out")], tmp_path)
    assert_refused(result, tmp_path / "out", fragment)


@pytest.mark.parametrize("spec, fragment", [
    ("nocolon", "module:function"),
    ("no_such_module_for_icd_tests:score", "cannot import module"),
    pytest.param("json:no_such_function", "no callable", marks=pytest.mark.slow),
])
def test_bad_evaluator_with_data(spec, fragment, valid_files, tmp_path):
    args = ["--space", "kl_beta", "--output", str(tmp_path / "out"), "--evaluator", spec]
    for flag in ("--rl-data", "--beam-data", "--embeddings"):
        args += [flag, str(valid_files[flag])]
    assert_refused(cli(args, tmp_path), tmp_path / "out", "--evaluator", fragment)


@pytest.mark.parametrize("env, fragment", [
    ({"RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE=disabled"),
    ({"RAY_ADDRESS": "127.0.0.1:6379"}, "RAY_ADDRESS"),
    ({"ICD_SWEEP_FAULT": "explode@2"}, "ICD_SWEEP_FAULT"),
    ({"ICD_SWEEP_FAULT": "raise@2:seed"}, "ICD_SWEEP_FAULT"),
])
def test_bad_environment(env, fragment, tmp_path):
    args = ["--space", "kl_beta", "--smoke-test", "--output", str(tmp_path / "out")]
    if "RAY_AUTH_MODE" in env:
        args += ["--dashboard", "--dashboard-host", "0.0.0.0"]
    if "RAY_ADDRESS" in env:
        args += ["--dashboard"]
    assert_refused(cli(args, tmp_path, env=env), tmp_path / "out", fragment)


def test_corpus_size():
    cases = len(SPACE_CASES) + len(DATA_CASES) + len(CLI_CASES)
    assert cases >= 30 and len(list(SPACES.iterdir())) + len(list(DATA.iterdir())) >= 30


# ---------------------------------------------------------------------------
# random input: only the project's own error type

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["description", "seeds", "num_samples", "scientific", "nuisance", "fixed", "presets",
                         "kl_beta", "grid", "loguniform", "choice", "grpo_lr", "batch_size", "x"])
        | st.text(max_size=6),
        inner, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=json_values)
def test_random_space_files_raise_only_user_error(tmp_path_factory, obj):
    from sweep.spaces import load_space

    path = tmp_path_factory.mktemp("space") / "random.yaml"
    path.write_text(json.dumps(obj))  # JSON is YAML
    try:
        load_space(path).preview("grid", None, 1, 0)
    except UserError as exc:
        assert "random.yaml" in str(exc), str(exc)  # names the file


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=json_values)
def test_random_run_records_raise_only_user_error(tmp_path_factory, obj):
    from sweep.experiment import RUN_ARGS, read_record

    exp = tmp_path_factory.mktemp("exp")
    (exp / RUN_ARGS).write_text(json.dumps(obj))
    try:
        record = read_record(exp)
    except UserError:
        return
    assert isinstance(record["args"], dict)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.text(max_size=20), max_size=3))
def test_random_set_flags_raise_only_user_error(items):
    from sweep.spaces import parse_set

    try:
        parse_set(items)
    except UserError:
        pass


# ---------------------------------------------------------------------------
# safe loading, statically: a new unsafe call anywhere in the product code fails here

def _calls(path: Path):
    import ast

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name):
            yield node.func.value.id, node.func.attr, node


PRODUCT = sorted(p for d in ("trainer", "sweep", "bench") for p in (REPO / d).rglob("*.py"))


def test_product_code_loads_data_safely():
    unsafe = []
    for path in PRODUCT:
        for module, attr, node in _calls(path):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if module == "torch" and attr == "load":
                flag = kw.get("weights_only")
                if not (flag is not None and getattr(flag, "value", None) is True):
                    unsafe.append(f"{where} torch.load without weights_only=True")
            if module in ("pickle", "cloudpickle", "dill", "marshal", "shelve") and attr in (
                    "load", "loads", "Unpickler", "open"):
                unsafe.append(f"{where} {module}.{attr}")
            if module == "yaml" and attr != "safe_load" and "load" in attr:
                unsafe.append(f"{where} yaml.{attr}")
            allow_pickle = getattr(kw.get("allow_pickle"), "value", False)
            if module in ("np", "numpy") and attr == "load" and allow_pickle:
                unsafe.append(f"{where} numpy.load(allow_pickle=True)")
    assert PRODUCT and not unsafe, unsafe
