"""--output as a path or a URI: Tune's storage path, the staging mirror, the visibility marker."""
import shutil

import pytest

from sweep.storage import STAGING_ENV, Output, resolve_output
from trainer.errors import UserError


def test_path_output_is_its_own_tune_storage(tmp_path):
    out = Output(spec="x", local=tmp_path)
    assert out.storage_path == str(tmp_path) and out.experiment("e") == str(tmp_path / "e")
    (tmp_path / "e").mkdir()
    with pytest.raises(UserError, match="--resume e"):
        out.fresh("e")
    assert out.pull("e") == tmp_path / "e" and out.push("e") == []


def test_unknown_uri_scheme_is_refused_naming_the_flag():
    with pytest.raises(UserError, match="^--output nope://bucket/x: pyarrow cannot open"):
        resolve_output("nope://bucket/x")


def test_uri_output_mirrors_staging_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))
    remote = tmp_path / "bucket"
    out = Output(spec=f"file://{remote}", local=tmp_path / "staging" / "s", uri=f"file://{remote}")
    assert out.storage_path == f"file://{remote}" and out.experiment("e") == f"file://{remote}/e"
    exp = out.fresh("e")
    exp.mkdir(parents=True)
    (exp / "run_args.json").write_text("{}")
    assert out.push("e") == ["run_args.json"] and (remote / "e" / "run_args.json").read_text() == "{}"
    assert out.push("e") == []  # unchanged files are not sent again
    with pytest.raises(UserError, match="already exists"):
        out.fresh("e")

    # what Tune writes remotely comes down; a file changed here is not overwritten by its remote copy
    for ckpt in ("checkpoint_000000", "checkpoint_000001"):
        (remote / "e" / "trial_a" / ckpt).mkdir(parents=True)
        (remote / "e" / "trial_a" / ckpt / "evaluation.json").write_text(ckpt)
    (exp / "decisions.csv").write_text("local")
    (remote / "e" / "decisions.csv").write_text("stale remote")
    out.pull("e")
    assert (exp / "trial_a" / "checkpoint_000001" / "evaluation.json").read_text() == "checkpoint_000001"
    assert (exp / "decisions.csv").read_text() == "local"
    assert out.push("e") == ["decisions.csv"] and (remote / "e" / "decisions.csv").read_text() == "local"

    # a checkpoint Tune deleted disappears from staging; pulled files are never pushed back
    shutil.rmtree(remote / "e" / "trial_a" / "checkpoint_000000")
    out.pull("e")
    assert not (exp / "trial_a" / "checkpoint_000000").exists()
    assert out.push("e") == []

    # a new process trusts the URI, not whatever staging was left behind
    (exp / "leaderboard.csv").write_text("stale staging")
    again = Output(spec=out.spec, local=out.local, uri=out.uri)
    assert again.pull("e") == exp and not (exp / "leaderboard.csv").exists()
    assert (exp / "run_args.json").read_text() == "{}"


def test_resolve_output_gives_one_object_per_spec_and_a_staging_folder_for_uris(tmp_path, monkeypatch):
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))
    resolve_output.cache_clear()
    try:
        uri = resolve_output(f"file://{tmp_path}/bucket/")
        assert uri is resolve_output(f"file://{tmp_path}/bucket/")
        assert uri.uri == f"file://{tmp_path}/bucket" and uri.local.parent == tmp_path / "staging"
        path = resolve_output(str(tmp_path / "plain"))
        assert path.uri is None and path.local == tmp_path / "plain"
    finally:
        resolve_output.cache_clear()


def test_marker_removes_only_the_folders_it_created(tmp_path):
    out = Output(spec="o", local=tmp_path / "a" / "b")
    created = out.write_marker(".m", "tok")
    assert created == tmp_path / "a" and (tmp_path / "a" / "b" / ".m").read_text() == "tok"
    out.remove_marker(".m", created)
    assert not (tmp_path / "a").exists() and tmp_path.is_dir()

    (tmp_path / "kept").mkdir()
    kept = Output(spec="k", local=tmp_path / "kept")
    assert kept.write_marker(".m", "tok") is None
    kept.remove_marker(".m", None)
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


def test_uri_marker_leaves_an_existing_root_and_removes_one_it_made(tmp_path):
    fresh = Output(spec="u", local=tmp_path / "staging", uri=f"file://{tmp_path}/bucket/p")
    created = fresh.write_marker(".m", "tok")
    assert (tmp_path / "bucket" / "p" / ".m").read_text() == "tok"
    fresh.remove_marker(".m", created)
    assert not (tmp_path / "bucket" / "p").exists()

    (tmp_path / "bucket" / "q").mkdir(parents=True)
    (tmp_path / "bucket" / "q" / "other").write_text("x")
    busy = Output(spec="u", local=tmp_path / "staging", uri=f"file://{tmp_path}/bucket/q")
    busy.remove_marker(".m", busy.write_marker(".m", "tok"))
    assert sorted(p.name for p in (tmp_path / "bucket" / "q").iterdir()) == ["other"]
