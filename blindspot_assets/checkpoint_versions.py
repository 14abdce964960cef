"""Which exact checkpoint a model entry points at: the data version of ``model_checkpoints``.

A checkpoint is a hub repo at a revision, or a local directory. Its version is, in order:
1. a local directory: ``sha256:<hex>``, a content hash over its files (see ``hash_directory``);
2. a revision that already is a commit (40 hex digits): that commit ("pinned");
3. the hub reachable: the commit the revision resolves to now ("hub");
4. offline: the commit the local Hugging Face cache recorded for that revision ("hub_cache");
5. otherwise unresolved: ``version`` is None, and ``data_version`` says so, with the repo and
   revision, so a later resolution still changes it.
Nothing here loads a model; hashing a multi-GB directory streams it and is cached per process
while no file's size or mtime changes.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from blindspot_assets.config import ConfigError


class MissingInput(ConfigError):
    """A checkpoint, folder or file the run config names that is not on this machine (the
    config itself may be right: fetch it, or point the field elsewhere)."""


_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_CHUNK = 1 << 20
_hash_cache: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


@dataclass(frozen=True)
class CheckpointVersion:
    repo: str
    revision: str | None
    version: str | None  # a commit sha, or "sha256:<hex>" for a local directory
    source: str  # local | pinned | hub | hub_cache | unresolved
    subfolder: str | None = None
    detail: str = ""

    @property
    def resolved(self) -> bool:
        return self.version is not None

    @property
    def data_version(self) -> str:
        if self.version is not None:
            return self.version
        return f"unresolved:{self.repo}@{self.revision or 'main'}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def looks_local(repo: str) -> bool:
    """A path (absolute, ./, ../, ~) or an existing directory; anything else is a hub id."""
    return (
        repo.startswith(("/", "./", "../", "~"))
        or os.path.isabs(repo)
        or Path(os.path.expanduser(repo)).is_dir()
    )


def is_hub_id(repo: str) -> bool:
    return bool(_HUB_ID_RE.match(repo))


def _hashed_files(root: Path) -> list[tuple[str, Path]]:
    """Regular files below ``root`` (links followed), sorted by POSIX relative path. Entries whose
    name starts with '.' are skipped: ``.cache/huggingface`` download metadata, ``.git``, locks
    change without the weights changing."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def hash_directory(path: Path) -> str:
    """``sha256:<hex>`` over (relative path, size, bytes) of every file, in sorted path order.

    The path and size framing keeps two different trees from hashing alike when one file's bytes
    run into the next file's name."""
    root = Path(path).expanduser().resolve()
    files = _hashed_files(root)
    signature = tuple((rel, (st := p.stat()).st_size, st.st_mtime_ns) for rel, p in files)
    cache_key = (str(root), signature)
    if cache_key in _hash_cache:
        return _hash_cache[cache_key]
    digest = hashlib.sha256()
    for (rel, file_path), (_, size, _) in zip(files, signature, strict=True):
        digest.update(rel.encode() + b"\0" + str(size).encode() + b"\0")
        with open(file_path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    result = f"sha256:{digest.hexdigest()}"
    _hash_cache[cache_key] = result
    return result


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set: then nothing asks the hub."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def cached_commit(repo: str, revision: str | None, cache_dir: Path | None = None) -> str | None:
    """The commit the local HF cache holds for ``repo@revision`` (None when it holds none)."""
    folder = (cache_dir or hub_cache_dir()) / f"models--{repo.replace('/', '--')}"
    rev = revision or "main"
    if _COMMIT_RE.match(rev):
        return rev if (folder / "snapshots" / rev).is_dir() else None
    ref = folder / "refs" / rev
    if ref.is_file():
        commit = ref.read_text().strip()
        if (folder / "snapshots" / commit).is_dir():
            return commit
    return None


def cached_snapshot(repo: str, revision: str | None, cache_dir: Path | None = None) -> Path | None:
    commit = cached_commit(repo, revision, cache_dir)
    if commit is None:
        return None
    return (
        (cache_dir or hub_cache_dir()) / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    )


def resolve_checkpoint(
    repo: str,
    revision: str | None = "main",
    *,
    subfolder: str | None = None,
    online: bool | None = None,
    cache_dir: Path | None = None,
    timeout_s: float = 10.0,
) -> CheckpointVersion:
    """Resolve ``repo@revision`` to a version (see the module docstring for the order)."""
    if looks_local(repo):
        root = Path(repo).expanduser()
        target = root / subfolder if subfolder else root
        if not target.is_dir():
            return CheckpointVersion(
                repo,
                None,
                None,
                "unresolved",
                subfolder,
                f"local directory {target} does not exist",
            )
        return CheckpointVersion(repo, None, hash_directory(target), "local", subfolder)
    rev = revision or "main"
    if _COMMIT_RE.match(rev):
        return CheckpointVersion(repo, rev, rev, "pinned", subfolder)
    ask_hub = (not hub_offline()) if online is None else online
    problem = "the hub was not asked (offline)"
    if ask_hub:
        try:
            from huggingface_hub import HfApi

            sha = HfApi().model_info(repo, revision=rev, timeout=timeout_s).sha
            if sha:
                return CheckpointVersion(repo, rev, sha, "hub", subfolder)
            problem = "the hub answered without a commit"
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the cache
            problem = f"hub lookup failed: {type(exc).__name__}: {str(exc)[:200]}"
    commit = cached_commit(repo, rev, cache_dir)
    if commit is not None:
        return CheckpointVersion(repo, rev, commit, "hub_cache", subfolder, problem)
    return CheckpointVersion(
        repo, rev, None, "unresolved", subfolder, f"{problem}; not in the local HF cache"
    )


def combined_data_version(checkpoints: Iterable[CheckpointVersion]) -> str:
    """One data version for a model made of several checkpoints (a pipeline plus a swapped UNet,
    a prior plus a decoder): the only one's, or a hash over all of them in order."""
    parts = list(checkpoints)
    if len(parts) == 1:
        return parts[0].data_version
    joined = "\n".join(f"{c.repo}|{c.subfolder or ''}|{c.data_version}" for c in parts)
    return "combined:" + hashlib.sha256(joined.encode()).hexdigest()[:32]


def library_versions(
    names: Iterable[str] = ("torch", "diffusers", "transformers", "pillow"),
) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
