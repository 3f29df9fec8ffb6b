"""The weights catalogue, cache, fetching and resolver: real downloads from a local HTTP server.

A tiny file is served on 127.0.0.1 by ``http.server`` in a thread; catalogue entries for it come
from a user catalogue (``$DOLOS_BENCH_CATALOGUE``) and the cache is a temporary folder
(``$DOLOS_BENCH_CACHE``). Hub ids are checked offline: the resolver and ``fetch`` must fail in one
line, fast, naming what to run.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import yaml
from click.testing import CliRunner

from dolos_bench.cli import main
from dolos_bench.weights import (
    FetchError,
    WeightsError,
    cache_dir,
    catalogue,
    check_stage_weights,
    fetch,
    require_entry,
    resolve_weights,
    stage_weights,
)
from dolos_bench.weights.catalogue import BUILTIN

PAYLOAD = b"tiny weights file\n" * 64
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server over a folder holding ``tiny.pt``; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "tiny.pt").write_bytes(PAYLOAD)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str) -> SimpleNamespace:
    """A private cache and a user catalogue with entries for the served file (right, wrong, md5, none)."""
    cache = tmp_path / "cache"
    entries = [
        {"name": "tiny", "kind": "file", "source": f"{server}/tiny.pt", "filename": "tiny.pt", "sha256": SHA256,
         "licence": "test", "used_by": ["generator:lama"]},
        {"name": "tiny-md5", "kind": "file", "source": f"{server}/tiny.pt", "filename": "tiny.pt", "md5": MD5},
        {"name": "tiny-wrong", "kind": "file", "source": f"{server}/tiny.pt", "filename": "tiny.pt",
         "sha256": "0" * 64},
        {"name": "tiny-nohash", "kind": "file", "source": f"{server}/tiny.pt", "filename": "tiny.pt"},
        {"name": "tiny-manual", "kind": "file", "source": "https://example.invalid/drive", "filename": "tiny.pt",
         "sha256": SHA256, "manual": True, "page": "https://example.invalid/page"},
        {"name": "tiny-404", "kind": "file", "source": f"{server}/absent.pt", "filename": "absent.pt"},
    ]
    listing = tmp_path / "catalogue.yaml"
    listing.write_text(yaml.safe_dump(entries))
    monkeypatch.setenv("DOLOS_BENCH_CACHE", str(cache))
    monkeypatch.setenv("DOLOS_BENCH_CATALOGUE", str(listing))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return SimpleNamespace(cache=cache, weights=cache / "weights", url=server, tmp=tmp_path)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- the catalogue ------------------------------------------------------------------------------------


def test_builtin_catalogue_names_the_models_and_never_invents_a_checksum() -> None:
    entries = catalogue()
    assert {e.name for e in BUILTIN} <= set(entries)
    for name in ("p2-celebahq", "p2-ffhq", "ddpm-celebahq", "ldm-celebahq", "ldm-inpainting", "big-lama",
                 "parsing-bisenet", "parsing-parsenet", "sd2-inpainting", "sdxl-inpainting", "flux-fill"):
        assert name in entries, name
    assert entries["big-lama"].md5 == "e3aa4aaa15225a33ec84f9f4bc47e500" and entries["big-lama"].sha256 is None
    assert entries["ddpm-celebahq"].source == "google/ddpm-ema-celebahq-256"
    assert entries["parsing-bisenet"].filename == "parsing_bisenet.pth"
    for entry in entries.values():
        assert entry.licence and entry.used_by, entry.name
        assert entry.sha256 is None or len(entry.sha256) == 64


def test_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DOLOS_BENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "dolos-bench" / "weights"
    monkeypatch.setenv("DOLOS_BENCH_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "weights"


# -- fetching -----------------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_ls_shows_it(env: SimpleNamespace) -> None:
    got = fetch(require_entry("tiny"), progress=False)
    assert got.path == env.weights / "tiny" / "tiny.pt" and got.path.read_bytes() == PAYLOAD
    assert got.check is not None and got.check.status == "verified"
    assert not [f for f in _files(env.weights) if ".partial" in f], "the staging folder was left behind"
    listing = CliRunner().invoke(main, ["weights", "ls"])
    assert listing.exit_code == 0, listing.output
    block = listing.output.split("tiny  [file]")[1].split("\n")
    assert block[0].strip() == f"verified (sha256:{SHA256})"
    assert any(str(got.path) in line for line in block[:6])
    assert "tiny-nohash  [file] missing" in listing.output
    assert f"cache: {env.weights}" in listing.output


def test_fetch_with_a_wrong_checksum_fails_clearly_and_keeps_nothing(env: SimpleNamespace) -> None:
    with pytest.raises(FetchError, match=r"tiny-wrong: the file downloaded from .* does not match the catalogue's "
                                         r"sha256:0{64}.*nothing was kept"):
        fetch(require_entry("tiny-wrong"), progress=False)
    assert _files(env.weights) == []
    result = CliRunner().invoke(main, ["weights", "fetch", "tiny-wrong", "--quiet"])
    assert result.exit_code == 2 and result.output.startswith("error: tiny-wrong:")
    assert len(result.output.strip().splitlines()) == 1
    assert _files(env.weights) == []


def test_fetch_by_md5_and_without_a_published_checksum(env: SimpleNamespace) -> None:
    assert fetch(require_entry("tiny-md5"), progress=False).check.status == "verified"  # type: ignore[union-attr]
    unverified = fetch(require_entry("tiny-nohash"), progress=False)
    assert unverified.check is not None and unverified.check.status == "unverifiable"
    assert unverified.check.sha256 == SHA256
    listing = CliRunner().invoke(main, ["weights", "ls"]).output
    assert "tiny-nohash  [file] present, unverified (no published checksum; sha256 unknown)" in listing
    assert "checksum: sha256 unknown (none published)" in listing


def test_fetch_of_a_missing_url_is_one_line(env: SimpleNamespace) -> None:
    result = CliRunner().invoke(main, ["weights", "fetch", "tiny-404", "--quiet"])
    assert result.exit_code == 2 and "tiny-404: cannot download" in result.output
    assert len(result.output.strip().splitlines()) == 1 and _files(env.weights) == []


def test_a_manual_entry_is_fetched_from_a_hand_downloaded_file(env: SimpleNamespace) -> None:
    result = CliRunner().invoke(main, ["weights", "fetch", "tiny-manual"])
    assert result.exit_code == 2 and "download tiny.pt by hand from https://example.invalid/page" in result.output
    assert "bench weights fetch tiny-manual --from FILE" in result.output
    wrong = env.tmp / "wrong.pt"
    wrong.write_bytes(b"something else")
    refused = CliRunner().invoke(main, ["weights", "fetch", "tiny-manual", "--from", str(wrong)])
    assert refused.exit_code == 2 and "does not match" in refused.output and "nothing was copied" in refused.output
    assert not (env.weights / "tiny-manual").exists()
    good = env.tmp / "downloaded.pt"
    good.write_bytes(PAYLOAD)
    done = CliRunner().invoke(main, ["weights", "fetch", "tiny-manual", "--from", str(good)])
    assert done.exit_code == 0, done.output
    assert (env.weights / "tiny-manual" / "tiny.pt").read_bytes() == PAYLOAD and good.exists()
    assert "verified" in done.output


def test_unknown_names_and_offline_hub_ids_are_one_line(env: SimpleNamespace) -> None:
    unknown = CliRunner().invoke(main, ["weights", "fetch", "tinny"])
    assert unknown.exit_code == 2 and "no weights entry 'tinny'" in unknown.output and "tiny" in unknown.output
    hub = CliRunner().invoke(main, ["weights", "fetch", "someone/absent-model", "--quiet"])
    assert hub.exit_code == 2 and "cannot download someone/absent-model from the Hugging Face Hub" in hub.output
    assert len(hub.output.strip().splitlines()) == 1


# -- resolving ------------------------------------------------------------------------------------------


def test_resolver_takes_paths_catalogue_names_and_says_what_to_run(env: SimpleNamespace) -> None:
    own = env.tmp / "mine.pt"
    own.write_bytes(b"my own model")
    assert resolve_weights(str(own), stage="generator lama", expect="file").origin == "path"
    with pytest.raises(WeightsError, match="is a file, not a model folder"):
        resolve_weights(str(own), stage="generator x", expect="folder")
    with pytest.raises(WeightsError, match=r"generator lama: tiny\.pt \(tiny\) is not in .*run `bench weights fetch tiny`"):
        resolve_weights("tiny", stage="generator lama", expect="file")
    fetch(require_entry("tiny"), progress=False)
    found = resolve_weights("tiny", stage="generator lama", expect="file")
    assert found.origin == "cache" and found.path == env.weights / "tiny" / "tiny.pt"
    assert found.identity() == {"weights": "tiny", "weights_sha256": SHA256}
    found.path.write_bytes(b"corrupted")  # a damaged cache file is caught, and the stamp does not hide it
    with pytest.raises(WeightsError, match=r"is not the tiny file \(expected sha256:.*bench weights fetch tiny` to replace it"):
        resolve_weights("tiny", stage="generator lama", expect="file")
    with pytest.raises(WeightsError, match=r"generator x: weights 'nowhere\.pt' is no existing file or folder"):
        resolve_weights("nowhere.pt", stage="generator x")


def test_resolver_finds_big_lama_where_lama_cleaner_put_it(env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    torch_home = env.tmp / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / "big-lama.pt").write_bytes(b"not the real big-lama")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    with pytest.raises(WeightsError, match=r"big-lama\.pt is not the big-lama file \(expected md5:e3aa4aaa"):
        resolve_weights("big-lama", stage="generator lama", expect="file")


def _hub_cache(env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache for this test (huggingface_hub reads HF_HUB_CACHE once, at import)."""
    from huggingface_hub import constants

    folder = env.tmp / "hf"
    folder.mkdir(exist_ok=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))
    return folder


def test_hub_ids_resolve_from_the_local_cache_only(env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    _hub_cache(env, monkeypatch)
    with pytest.raises(WeightsError, match=r"the Hub model stabilityai/stable-diffusion-2-inpainting is not in the local "
                                           r"Hugging Face cache; run `bench weights fetch sd2-inpainting`"):
        resolve_weights("sd2-inpainting", stage="generator diffusers-inpaint", expect="folder")
    with pytest.raises(WeightsError, match=r"run `bench weights fetch someone/model`"):
        resolve_weights("someone/model", stage="generator diffusers-inpaint", expect="folder")


def test_the_build_check_names_every_missing_weight(env: SimpleNamespace) -> None:
    specs = {"generators": [SimpleNamespace(type="telea", params={}), SimpleNamespace(type="lama", params={"weights": "tiny"}),
                            SimpleNamespace(type="lama", params={"weights": str(env.tmp / "absent.pt")})],
             "maskers": [SimpleNamespace(type="strokes", params={})]}
    needs = stage_weights(specs)
    assert [(n.stage, n.param) for n in needs] == [("generators[1] lama", "weights"), ("generators[2] lama", "weights")]
    with pytest.raises(WeightsError) as caught:
        check_stage_weights(specs)
    message = str(caught.value)
    assert "\n" not in message
    assert "generators[1] lama: tiny.pt (tiny) is not in" in message and "bench weights fetch tiny" in message
    assert "generators[2] lama: weights" in message and "absent.pt" in message
    fetch(require_entry("tiny"), progress=False)
    specs["generators"] = specs["generators"][:2]
    assert [n.resolved.origin for n in check_stage_weights(specs) if n.resolved] == ["cache"]


def test_a_missing_relative_file_is_not_taken_for_a_hub_id(env: SimpleNamespace) -> None:
    with pytest.raises(WeightsError, match=r"weights 'models/big-lama\.pt' is no existing file or folder"):
        resolve_weights("models/big-lama.pt", stage="generator lama", expect="file")


def test_a_hub_snapshot_in_the_local_cache_resolves_and_ls_shows_it(env: SimpleNamespace,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hf = _hub_cache(env, monkeypatch)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf / "models--stabilityai--stable-diffusion-2-inpainting"  # the cache layout huggingface_hub writes
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    found = resolve_weights("sd2-inpainting", stage="generator diffusers-inpaint", expect="folder")
    assert found.origin == "hub-cache" and found.path == snapshot and found.revision == commit
    assert resolve_weights("stabilityai/stable-diffusion-2-inpainting", stage="g", expect="folder").path == snapshot
    with pytest.raises(WeightsError, match="is a Hub repository; this stage takes a file"):
        resolve_weights("sd2-inpainting", stage="generator lama", expect="file")
    listing = CliRunner().invoke(main, ["weights", "ls"]).output
    assert f"sd2-inpainting  [hub] present (Hub cache, commit {commit[:12]}" in listing
