"""``--output`` as a filesystem path or as a URI that pyarrow opens (s3://, gs://, file://, ...).

Tune writes trial folders to ``storage_path`` itself, from whichever node a
trial runs on. Our own files (run_args.json, baselines.json, leaderboard.csv,
comparison.*, plots/, decisions.csv) and the caches are written through the
local filesystem; with a URI they go to a local staging folder that mirrors
the URI's experiment folder: ``push`` uploads what this process wrote,
``pull`` brings Tune's trial folders down for the leaderboard and ``--resume``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import UserError

STAGING_ENV = "ICD_SWEEP_STAGING"    # local staging root for URI outputs


@dataclass(eq=False)
class Output:
    """``local`` holds the caches and our files; ``storage_path`` is what Tune writes trials to.

    For a path both are the same folder and push/pull do nothing.
    """

    spec: str                  # --output as given
    local: Path
    uri: str | None = None
    _clean: dict = field(default_factory=dict)   # name -> {relative path: (size, mtime_ns)} as last synced

    @property
    def storage_path(self) -> str:
        return self.uri or str(self.local)

    def experiment(self, name: str) -> str:
        """The experiment folder as Tune names it (``Tuner.restore`` takes this)."""
        return f"{self.uri}/{name}" if self.uri else str(self.local / name)

    def exists(self, name: str) -> bool:
        if not self.uri:
            return (self.local / name).exists()
        import pyarrow.fs as pafs

        fs, root = self.filesystem()
        return fs.get_file_info(f"{root}/{name}").type != pafs.FileType.NotFound

    def fresh(self, name: str) -> Path:
        """The local folder of a new experiment; refused if ``name`` already exists in the output."""
        if self.exists(name):
            raise UserError(f"--name: {self.experiment(name)} already exists; use --resume {name} "
                            f"or another --name")
        if self.uri:
            shutil.rmtree(self.local / name, ignore_errors=True)  # stale staging of a deleted experiment
            self._clean[name] = {}
        return self.local / name

    def pull(self, name: str) -> Path:
        """Mirror the experiment from the URI into staging; files changed here since the last sync win."""
        exp = self.local / name
        if not self.uri:
            return exp
        import pyarrow.fs as pafs

        if name not in self._clean:  # first sync in this process: staging is only a cache
            shutil.rmtree(exp, ignore_errors=True)
            self._clean[name] = {}
        clean = self._clean[name]
        for rel in list(clean):  # drop remote-origin copies, so checkpoints Tune deleted go too
            path = exp / rel
            if path.is_file() and _stat(path) == clean.pop(rel):
                path.unlink()
        for folder in sorted((p for p in exp.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()
        fs, root = self.filesystem()
        remote = f"{root}/{name}"
        for info in fs.get_file_info(pafs.FileSelector(remote, recursive=True, allow_not_found=True)):
            dest = exp / info.path[len(remote) + 1:]
            if info.type != pafs.FileType.File or dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part")
            with fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, dest)
            clean[dest.relative_to(exp).as_posix()] = _stat(dest)
        return exp

    def push(self, name: str) -> list[str]:
        """Upload the experiment's files written or changed here since the last sync; returns them."""
        if not self.uri:
            return []
        exp = self.local / name
        clean = self._clean.setdefault(name, {})
        fs, root = self.filesystem()
        sent = []
        for path in sorted(p for p in exp.rglob("*") if p.is_file() and not p.name.endswith(".part")):
            rel = path.relative_to(exp).as_posix()
            if clean.get(rel) == _stat(path):
                continue
            target = f"{root}/{name}/{rel}"
            fs.create_dir(target.rpartition("/")[0], recursive=True)
            with open(path, "rb") as src, fs.open_output_stream(target) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            clean[rel] = _stat(path)
            sent.append(rel)
        return sent

    def filesystem(self):
        """(pyarrow filesystem, root path on it without a trailing slash); URI outputs only."""
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(self.uri)
        return fs, root.rstrip("/")

    def write_marker(self, marker: str, token: str) -> Path | None:
        """``token`` into ``<output>/<marker>``; returns the top folder this created, if any."""
        if self.uri:
            import pyarrow.fs as pafs

            fs, root = self.filesystem()
            existed = fs.get_file_info(root).type != pafs.FileType.NotFound
            fs.create_dir(root, recursive=True)
            with fs.open_output_stream(f"{root}/{marker}") as fh:
                fh.write(token.encode())
            return None if existed else Path(root)
        created = None
        for parent in [self.local, *self.local.parents]:
            if parent.exists():
                break
            created = parent
        try:
            self.local.mkdir(parents=True, exist_ok=True)
            (self.local / marker).write_text(token)
        except OSError as exc:
            raise UserError(f"--output {self.spec}: cannot write there ({exc.strerror or exc})")
        return created

    def remove_marker(self, marker: str, created: Path | None) -> None:
        """Undo ``write_marker``, including folders it created while they are still empty."""
        if self.uri:
            import pyarrow.fs as pafs

            fs, root = self.filesystem()
            fs.delete_file(f"{root}/{marker}")
            if created is not None and fs.get_file_info(root).type == pafs.FileType.Directory \
                    and not fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
                fs.delete_dir(root)  # a store with real folders (file://, hdfs): the marker made the root
            return
        (self.local / marker).unlink(missing_ok=True)
        if created is None:
            return
        for folder in [self.local, *self.local.parents]:
            try:
                folder.rmdir()
            except OSError:
                break
            if folder == created:
                break


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=None)
def resolve_output(spec: str) -> Output:
    """One ``Output`` per --output per process (its sync state is shared by run/execute)."""
    if "://" not in spec:
        return Output(spec=spec, local=Path(spec).expanduser().resolve())
    try:
        import pyarrow.fs as pafs

        pafs.FileSystem.from_uri(spec)
    except Exception as exc:  # pyarrow raises several types: unknown scheme, missing credentials, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--output {spec}: pyarrow cannot open this URI ({first}); give a path "
                        f"shared by every node or a URI such as s3://bucket/prefix")
    uri = spec.rstrip("/")
    staging_root = Path(os.environ.get(STAGING_ENV) or Path.home() / ".cache" / "icd-sweep" / "staging")
    key = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return Output(spec=spec, local=(staging_root / f"{uri.split('://')[0]}-{key}").resolve(), uri=uri)
