"""``bench publish``: upload a finished dataset folder to the Hugging Face Hub, card included.

A folder is uploaded only if its manifest says the build is complete and every shard still
hashes to the manifest's sha256: a half-built or altered dataset must never reach the Hub
looking finished.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .data.dataset_io import CARD, MANIFEST, STATE_DIR, verify_shards

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class PublishError(UserError, RuntimeError):
    """The folder or repository id cannot be published as asked."""


@dataclass
class PublishResult:
    files: list[tuple[str, int]]  # (path in repo, size in bytes)
    url: str | None


def files_to_upload(folder: Path) -> list[tuple[str, int]]:
    """Card, manifest and shards; never the resume state or stray files."""
    files = [CARD, MANIFEST] + sorted(p.relative_to(folder).as_posix() for p in (folder / "data").glob("*.parquet"))
    return [(f, (folder / f).stat().st_size) for f in files if (folder / f).exists()]


def publish_folder(
    folder: Path, repo: str, *, private: bool = False, dry_run: bool = False, revision: str | None = None
) -> PublishResult:
    if not _REPO_ID.match(repo):
        raise PublishError(f"--repo must look like ORG/NAME, got {repo!r}")
    problems = verify_shards(folder)
    if (folder / STATE_DIR).exists():
        problems.append("a resume state folder is present: the build did not finish")
    if problems:
        raise PublishError(f"refusing to publish {folder}: " + "; ".join(problems))
    if not (folder / CARD).exists():
        raise PublishError(f"refusing to publish {folder}: no {CARD} dataset card")
    files = files_to_upload(folder)
    if dry_run:
        return PublishResult(files, None)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            repo_type="dataset",
            revision=revision,
            allow_patterns=[f for f, _ in files],
            commit_message=f"Upload dataset built with dolos-bench ({len(files)} files)",
        )
    except Exception as exc:  # noqa: BLE001 - network/auth errors become one clear line
        raise PublishError(f"upload to datasets/{repo} failed: {type(exc).__name__}: {exc}") from exc
    return PublishResult(files, getattr(commit, "commit_url", None) or str(commit))
