"""Precomputed predictions: every file format, every container, and every way a bundle is wrong."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from dolos_bench.eval.api import LocalizerError
from dolos_bench.eval.localizers import LocalizerLoadError, call_localizer, load_localizer
from dolos_bench.eval.predictions import PredictionsError, PredictionsLocalizer

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

IDS = ["s0", "s1", "s2", "s3", "real.004"]
SHAPE = (6, 8)


def _expected() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    png8 = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    png16 = rng.integers(0, 65536, SHAPE, dtype=np.uint16)
    return {
        "s0": png8.astype(np.float32) / 255,
        "s1": png16.astype(np.float32) / 65535,
        "s2": rng.random(SHAPE, dtype=np.float32),
        "s3": rng.random(SHAPE).astype(np.float64),
        "real.004": np.zeros(SHAPE, np.float32),
        "_png8": png8,  # type: ignore[dict-item]
        "_png16": png16,  # type: ignore[dict-item]
    }


def _write_bundle(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    exp = _expected()
    cv2.imwrite(str(folder / "s0.png"), exp["_png8"])
    cv2.imwrite(str(folder / "s1.png"), exp["_png16"])
    np.save(folder / "s2.npy", exp["s2"])
    np.savez_compressed(folder / "s3.npz", other=np.ones(3), map=exp["s3"])
    np.savez(folder / "real.004.npz", exp["real.004"][None])  # first array, (1, H, W) squeezed
    (folder / "scores.csv").write_text("id,score\ns0,0.9\ns1,0.1\ns2,1\ns3,0\nreal.004,0.25\n")
    return exp


@pytest.fixture()
def bundle(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path / "preds"
    return folder, _write_bundle(folder)


def _images(n: int = len(IDS), shape: tuple[int, int] = SHAPE) -> list[np.ndarray]:
    return [np.zeros((*shape, 3), np.uint8) for _ in range(n)]


def _zip(folder: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, prefix + f.name)
    return dest


def _tar(folder: Path, dest: Path, mode: str) -> Path:
    with tarfile.open(dest, mode) as tf:
        tf.add(folder, arcname=".")
    return dest


def _check_bundle(loc: PredictionsLocalizer, exp: dict[str, np.ndarray]) -> None:
    loc.validate(IDS)
    out = call_localizer(loc, _images(), IDS)
    for sample_id, m in zip(IDS, out.maps):
        assert m.dtype == np.float32 and m.shape == SHAPE
        np.testing.assert_allclose(m, exp[sample_id], atol=1e-6, err_msg=sample_id)
    assert out.scores == [0.9, 0.1, 1.0, 0.0, 0.25]


# -- happy paths ----------------------------------------------------------------------------------


def test_folder_formats_and_scores(bundle: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, exp = bundle
    loc = load_localizer(folder)
    assert isinstance(loc, PredictionsLocalizer) and loc.ids == sorted(IDS)
    _check_bundle(loc, exp)
    ident = loc.identity()
    assert ident["kind"] == "predictions" and ident["name"] == "preds" and len(ident["weights_sha256"]) == 64


@pytest.mark.parametrize("container", ["zip", "zip-wrapped", "tar", "tar.gz", "tgz"])
def test_archives_match_the_folder(tmp_path: Path, bundle: tuple[Path, dict[str, np.ndarray]], container: str) -> None:
    folder, exp = bundle
    if container.startswith("zip"):
        path = _zip(folder, tmp_path / "preds.zip", "preds/" if container == "zip-wrapped" else "")
    else:
        mode = "w" if container == "tar" else "w:gz"
        path = _tar(folder, tmp_path / f"preds.{container}", mode)
    loc = load_localizer(path)
    assert isinstance(loc, PredictionsLocalizer)
    _check_bundle(loc, exp)
    # The hash is of the content, not the container: same predictions, same weights_sha256.
    assert loc.identity()["weights_sha256"] == PredictionsLocalizer(folder).identity()["weights_sha256"]
    assert loc.identity()["name"] == "preds"


def test_os_junk_is_ignored_and_content_changes_the_hash(bundle: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = bundle
    before = PredictionsLocalizer(folder).identity()["weights_sha256"]
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "__MACOSX").mkdir()
    loc = PredictionsLocalizer(folder)
    loc.validate(IDS)
    assert loc.identity()["weights_sha256"] == before
    np.save(folder / "s2.npy", np.ones(SHAPE, np.float32))
    assert PredictionsLocalizer(folder).identity()["weights_sha256"] != before


def test_predict_needs_ids(bundle: tuple[Path, dict[str, np.ndarray]]) -> None:
    loc = PredictionsLocalizer(bundle[0])
    with pytest.raises(LocalizerError, match=r"looks maps up by sample id.*ids="):
        loc.predict(_images(1))
    with pytest.raises(PredictionsError, match=r"no prediction for id 'nope'"):
        loc.predict(_images(1), ids=["nope"])


# -- validate -------------------------------------------------------------------------------------


def test_validate_lists_missing_extra_and_stray_files(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    for i in range(15):
        np.save(folder / f"extra{i:02d}.npy", np.zeros((2, 2), np.float32))
    np.save(folder / "kept.npy", np.zeros((2, 2), np.float32))
    (folder / "notes.txt").write_text("hi")
    (folder / "map.jpg").write_bytes(b"\xff\xd8")
    (folder / "sub").mkdir()
    expected = ["kept"] + [f"missing{i:02d}" for i in range(12)]
    loc = PredictionsLocalizer(folder)
    with pytest.raises(PredictionsError) as info:
        loc.validate(expected)
    msg = str(info.value)
    assert "(13 ids)" in msg
    assert "missing 12 ids: 'missing00', " in msg and "'missing09' ... and 2 more" in msg
    assert "'missing10'" not in msg
    assert "15 extra ids not in the dataset: 'extra00'" in msg and "... and 5 more" in msg
    assert "3 files that are not predictions" in msg and "'map.jpg', 'notes.txt', 'sub/'" in msg
    # allow_extra: a bundle covering more splits than the one scored.
    for f in ("notes.txt", "map.jpg"):
        (folder / f).unlink()
    (folder / "sub").rmdir()
    PredictionsLocalizer(folder, allow_extra=True).validate(["kept"])


def test_validate_scores_coverage(bundle: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = bundle
    (folder / "scores.csv").write_text("id,score\ns0,0.5\nghost,0.5\n")
    with pytest.raises(PredictionsError) as info:
        PredictionsLocalizer(folder).validate(IDS)
    assert "4 ids without a score in scores.csv: 's1'" in str(info.value)
    assert "1 ids in scores.csv not in the dataset: 'ghost'" in str(info.value)
    with pytest.raises(PredictionsError, match=r"no score in scores.csv for ids 's1'"):
        PredictionsLocalizer(folder).predict(_images(2), ids=["s0", "s1"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,score\ns0,1.5\n", r"scores.csv line 2: score 1.5 of id 's0' is not a finite number in \[0, 1\]"),
        ("id,score\ns0,nan\n", r"line 2: score nan of id 's0'"),
        ("id,score\ns0,high\n", r"line 2: score 'high' of id 's0' is not a number"),
        ("name,value\ns0,1\n", r"needs a header 'id,score'"),
        ("id,score\ns0,0.1\ns0,0.2\n", r"line 3: id 's0' appears twice"),
    ],
)
def test_bad_scores_csv(bundle: tuple[Path, dict[str, np.ndarray]], content: str, message: str) -> None:
    (bundle[0] / "scores.csv").write_text(content)
    with pytest.raises(PredictionsError, match=message):
        PredictionsLocalizer(bundle[0])


def test_duplicate_ids(bundle: tuple[Path, dict[str, np.ndarray]]) -> None:
    np.save(bundle[0] / "s0.npy", np.zeros(SHAPE, np.float32))
    with pytest.raises(PredictionsError, match=r"more than one prediction for 1 ids: 's0' \(s0.npy and s0.png\)"):
        PredictionsLocalizer(bundle[0])


# -- bad maps -------------------------------------------------------------------------------------


def _rgb_png(path: Path) -> None:
    img = np.zeros((*SHAPE, 3), np.uint8)
    img[..., 2] = 200
    cv2.imwrite(str(path), img)


@pytest.mark.parametrize(
    ("name", "write", "message"),
    [
        ("bad.npy", lambda p: np.save(p, np.full(SHAPE, np.nan, np.float32)), r"id 'bad'.*48 NaN/inf.*finite.*bad.npy"),
        ("bad.npy", lambda p: np.save(p, np.full(SHAPE, np.inf)), r"id 'bad'.*NaN/inf"),
        ("bad.npz", lambda p: np.savez(p, map=np.full(SHAPE, 2.0)), r"id 'bad'.*\[2, 2\].*must lie in \[0, 1\]"),
        ("bad.npy", lambda p: np.save(p, np.full(SHAPE, -0.1)), r"id 'bad'.*-0.1"),
        ("bad.npy", lambda p: np.save(p, np.zeros((2, *SHAPE))), r"id 'bad'.*shape \(2, 6, 8\).*2-D"),
        ("bad.npy", lambda p: np.save(p, np.zeros(SHAPE, np.int64)), r"id 'bad' \(bad.npy\).*dtype int64.*float"),
        ("bad.npy", lambda p: p.write_bytes(b"garbage"), r"id 'bad' \(bad.npy\): cannot read the .npy"),
        ("bad.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), r"id 'bad'.*cannot read"),
        ("bad.png", _rgb_png, r"id 'bad' \(bad.png\): PNG has 3 different color channels"),
        ("bad.png", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 jpeg really"), r"id 'bad'.*not a PNG"),
    ],
)
def test_bad_maps_name_the_id(tmp_path: Path, name: str, write, message: str) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    write(folder / name)
    loc = PredictionsLocalizer(folder)
    loc.validate(["bad"])  # layout is fine; content is checked when read
    with pytest.raises(PredictionsError, match=message):
        loc.predict(_images(1), ids=["bad"])
    with pytest.raises(PredictionsError, match=message):
        loc.validate(["bad"], deep=True)


def test_gray_rgb_png_is_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((*SHAPE, 3), 51, np.uint8))
    out = PredictionsLocalizer(folder).predict(_images(1), ids=["a"])
    assert np.allclose(out.maps[0], 0.2)


def test_strict_size(bundle: tuple[Path, dict[str, np.ndarray]]) -> None:
    images = _images(2, shape=(12, 16))
    out = PredictionsLocalizer(bundle[0]).predict(images, ids=["s0", "s2"])  # runner resizes
    assert out.maps[0].shape == SHAPE
    loc = load_localizer(bundle[0], options={"strict_size": True})
    with pytest.raises(PredictionsError, match=r"id 's0'.*map is 6x8 but the image is 12x16.*strict_size"):
        loc.predict(images, ids=["s0", "s2"])
    loc.predict(_images(2), ids=["s0", "s2"])


def test_unknown_option(bundle: tuple[Path, dict[str, np.ndarray]]) -> None:
    with pytest.raises(LocalizerLoadError, match=r"unknown option 'strict'.*Did you mean 'strict_size'"):
        load_localizer(bundle[0], options={"strict": True})


# -- unsafe bundles -------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_folder_symlink_outside_is_refused(bundle: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    folder, _ = bundle
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros(SHAPE, np.float32))
    os.symlink(folder / "s2.npy", folder / "inside.npy")  # a link within the folder is fine
    PredictionsLocalizer(folder, allow_extra=True).validate(IDS)
    os.symlink(secret, folder / "leak.npy")
    with pytest.raises(PredictionsError, match=r"'leak.npy' is a symlink pointing outside the folder"):
        PredictionsLocalizer(folder)


def _zip_with(tmp_path: Path, name: str, data: bytes = b"x", attr: int | None = None) -> Path:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.npy", b"x")
        info = zipfile.ZipInfo(name)
        if attr is not None:
            info.external_attr = attr << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil.npy", r"member '../evil.npy' contains a '..' component"),
        ("a/../../evil.npy", r"contains a '..' component"),
        ("/etc/evil.npy", r"member '/etc/evil.npy' is an absolute path"),
        ("C:/evil.npy", r"is an absolute path"),
    ],
)
def test_zip_member_paths_are_refused(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(PredictionsError, match=message):
        load_localizer(_zip_with(tmp_path, name))


def test_zip_symlink_outside_is_refused(tmp_path: Path) -> None:
    path = _zip_with(tmp_path, "link.npy", b"../../etc/passwd", attr=stat.S_IFLNK | 0o777)
    with pytest.raises(PredictionsError, match=r"member 'link.npy' is a symlink pointing outside the archive"):
        PredictionsLocalizer(path)


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("ok.npy")
        ok.size = 1
        tf.addfile(ok, io.BytesIO(b"x"))
        member.size = len(data)
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("../evil.npy"), r"member '../evil.npy' contains a '..' component"),
        (_member("/abs/evil.npy"), r"member '/abs/evil.npy' is an absolute path"),
        (_member("link.npy", tarfile.SYMTYPE, "/etc/passwd"), r"'link.npy' is a symlink pointing outside.*'/etc/passwd'"),
        (_member("d/link.npy", tarfile.SYMTYPE, "../../x"), r"'d/link.npy' is a symlink pointing outside"),
        (_member("hard.npy", tarfile.LNKTYPE, "../outside"), r"'hard.npy' is a hardlink pointing outside"),
        (_member("dev.npy", tarfile.CHRTYPE), r"'dev.npy' is not a regular file"),
        (_member("fifo.npy", tarfile.FIFOTYPE), r"'fifo.npy' is not a regular file"),
    ],
)
def test_tar_members_are_refused(tmp_path: Path, member: tarfile.TarInfo, message: str) -> None:
    data = b"x" if member.type == tarfile.REGTYPE else b""
    with pytest.raises(PredictionsError, match=message):
        load_localizer(_tar_with(tmp_path, member, data))


def test_tar_link_inside_is_followed(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.full((2, 2), 0.5, np.float32))
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("a.npy")
        info.size = len(buf.getvalue())
        tf.addfile(info, io.BytesIO(buf.getvalue()))
        tf.addfile(_member("b.npy", tarfile.SYMTYPE, "a.npy"))
    out = PredictionsLocalizer(path).predict(_images(2, (2, 2)), ids=["a", "b"])
    assert np.allclose(out.maps[1], 0.5)


_BIG = 4 << 20  # 4 MiB of zeros: ~4 KiB deflated, ~40 bytes with bzip2


def test_zip_bomb_total_size(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.npy", b"\0" * _BIG)
    with pytest.raises(PredictionsError, match=r"member 'a.npy' inflates to 4194304 bytes, more than max_member_bytes=1048576"):
        load_localizer(path, options={"max_member_bytes": "1MiB"})
    with pytest.raises(PredictionsError, match=r"more than max_total_bytes=2097152 by member 'a.npy'"):
        load_localizer(path, options={"max_total_bytes": 2 << 20})
    with pytest.raises(PredictionsError, match=r"member 'a.npy' has compression ratio \d+:1, more than max_ratio=100"):
        load_localizer(path, options={"max_ratio": 100})
    PredictionsLocalizer(path)  # deflate tops out near 1000:1: the defaults let zero maps through


def test_zip_bomb_bzip2_caught_by_default_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("a.npy", b"\0" * _BIG)
    with pytest.raises(PredictionsError, match=r"'a.npy' has compression ratio \d+:1.*archive bomb"):
        PredictionsLocalizer(path)


def test_tar_gz_bomb_and_member_count(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"m{i}.npy")
            info.size = _BIG
            tf.addfile(info, io.BytesIO(b"\0" * _BIG))
    with pytest.raises(PredictionsError, match=r"inflate past \d+ bytes by member 'm\d.npy', ratio above max_ratio=50"):
        PredictionsLocalizer(path, max_ratio=50)
    with pytest.raises(PredictionsError, match=r"more than max_total_bytes=10485760 by member 'm2.npy'"):
        PredictionsLocalizer(path, max_total_bytes="10MiB")
    with pytest.raises(PredictionsError, match=r"more than max_members=2 members"):
        PredictionsLocalizer(path, max_members=2)
