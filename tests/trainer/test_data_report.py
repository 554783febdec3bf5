"""python -m trainer.data_report: exact numbers on a fixture, one-line errors with exit code 2."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.data_report import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "trainer" / "data" / "fixtures"
RL = str(FIXTURES / "rl_global.json")


def run_json(capsys, *args):
    assert main(["--rl-data", RL, "--json", *args]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout is one JSON object


def test_json_report_exact_numbers(capsys):
    rep = run_json(capsys)
    # kept: q1 acc (1.0, 0.6, 0.0), q2 (0.0, 0.0), q6 (1.0, 1.0, 0.6); q4 left with one candidate
    assert rep["queries"] == 3 and rep["candidates"] == 8 and rep["shot_num"] == 2
    assert rep["dropped"] == {"eval_failed": 1, "eval_mode_fallback": 1, "repeated_icd": 1,
                              "eval_mode_error": 1, "query_fewer_than_2_candidates": 1}
    assert rep["positive_fraction"] == pytest.approx(5 / 8)
    assert (rep["all_negative_queries"], rep["all_positive_queries"]) == (1, 1)
    assert rep["candidates_per_query"] == {"min": 2, "median": 3, "max": 3}
    # sorted acc 0,0,0,.6,.6,1,1,1; linear interpolation at p*(n-1)
    assert rep["reward_quantiles"] == pytest.approx(
        {"p5": 0.0, "p25": 0.0, "p50": 0.6, "p75": 1.0, "p95": 1.0})
    # beam scores of kept candidates 0.1, 0.3, 0.9, 1.2, 1.5: p5 at 0.2 -> 0.1 + 0.2 * 0.2, p95 at 3.8
    assert rep["beam_score_quantiles"] == pytest.approx(
        {"p5": 0.14, "p25": 0.3, "p50": 0.9, "p75": 1.2, "p95": 1.44})


def test_json_report_with_filter_flags(capsys):
    rep = run_json(capsys, "--require-positive-query")
    assert (rep["queries"], rep["candidates"], rep["dropped"]["query_no_positive"]) == (2, 6, 1)
    assert rep["positive_fraction"] == pytest.approx(5 / 6) and rep["all_negative_queries"] == 0
    rep = run_json(capsys, "--filter-min-beam-score-quantile", "0.5")
    # threshold 0.7 (median of 0.1, 0.3, 0.5, 0.9, 1.2, 1.5): q2 and q4 lose their beam candidate
    assert (rep["queries"], rep["candidates"]) == (2, 5)
    assert rep["dropped"]["below_beam_score_quantile"] == 3
    assert rep["dropped"]["query_fewer_than_2_candidates"] == 2
    assert rep["candidates_per_query"] == {"min": 2, "median": 2.5, "max": 3}
    rep = run_json(capsys, "--no-skip-fallback")
    assert rep["candidates"] == 9 and "eval_mode_fallback" not in rep["dropped"]


def test_beam_and_embeddings_sections(capsys, tmp_path):
    torch.save(torch.randn(20, 3), tmp_path / "emb.pt")
    rep = run_json(capsys, "--beam-data", str(FIXTURES / "beam.json"),
                   "--embeddings", str(tmp_path / "emb.pt"))
    assert rep["embeddings"] == {"rows": 20, "dim": 3}
    assert rep["beam"]["queries"] == 2 and rep["beam"]["beams"] == 5 and rep["beam"]["shared_with_rl"] == 0
    assert rep["beam"]["score_quantiles"]["p50"] == pytest.approx(0.03)


def test_text_report(capsys):
    assert main(["--rl-data", RL]) == 0
    out = capsys.readouterr().out
    assert "queries kept            3" in out
    assert "all-negative queries    1" in out
    assert "eval_failed=1" in out and "min 2  median 3  max 3" in out


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "trainer.data_report", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_malformed_file_exits_2_with_one_line(tmp_path):
    bad = json.loads(Path(RL).read_text())
    bad["2"]["pointer_candidates"][1]["vqa_acc_score"] = math.nan
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    proc = run_cli("--rl-data", str(path), "--json")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and "query 2" in lines[0]
    assert "pointer_candidates[1].vqa_acc_score" in lines[0]


@pytest.mark.parametrize("make_args, words", [
    (lambda d: ["--rl-data", str(d / "missing.json")], "not found"),
    (lambda d: ["--rl-data", RL, "--embeddings", str(d / "small.pt")], "small.pt"),
    (lambda d: ["--rl-data", RL, "--filter-min-beam-score-quantile", "1.5"],
     "filter_min_beam_score_quantile"),
])
def test_bad_input_exits_2(tmp_path, capsys, make_args, words):
    torch.save(torch.randn(5, 3), tmp_path / "small.pt")
    assert main(make_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err
