"""Training data: TFDS ImageFolder (array_record, no TensorFlow), augmentation, loader, npz.

Every image is generated under tmp_path; nothing reads ../shared.
"""
from __future__ import annotations

import colorsys
import io
import json
import logging
import os
import re
import shutil
import sys

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

# tensorflow-datasets and array-record are requirements: a missing one fails these tests
# (arbitrary_nst.data imports them), never skips them
from arbitrary_nst import data, images, weights
from arbitrary_nst.errors import ConfigError
from arbitrary_nst.images import load_image


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colourful uint8 image (JPEG-friendly, so re-encoding errors stay small)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(0.005, 0.03, 3)
    ph = rng.uniform(0, 6, 3)
    img = np.stack([0.5 + 0.45 * np.sin(f[c] * (xx + 1.3 * yy) + ph[c]) for c in range(3)], -1)
    return (img * 255).astype(np.uint8)


# name -> (size as stored (w, h), writer)
GOOD = {
    "a_rgb.jpg": (400, 300),
    "b_big.png": None,  # 700 x 520 -> capped to short side 512
    "sub/c_gray.png": (260, 200),
    "sub/d_rgba.png": (120, 100),
    "sub/deeper/e_palette.gif": (150, 180),
    "f_progressive.JPEG": (333, 257),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs") / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(_smooth(300, 400, 0)).save(root / "a_rgb.jpg", quality=85)
    Image.fromarray(_smooth(520, 700, 1)).save(root / "b_big.png")
    Image.fromarray(_smooth(200, 260, 2)[..., 0]).save(root / "sub" / "c_gray.png")
    rgba = np.concatenate([_smooth(100, 120, 3), np.full((100, 120, 1), 200, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(root / "sub" / "d_rgba.png")
    Image.fromarray(_smooth(180, 150, 4)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        root / "sub" / "deeper" / "e_palette.gif")
    Image.fromarray(_smooth(257, 333, 5)).save(root / "f_progressive.JPEG", quality=90, progressive=True)
    good = _smooth(64, 64, 6)
    buf = root / "corrupt.jpg"
    Image.fromarray(_smooth(200, 200, 7)).save(buf, quality=90)
    buf.write_bytes(buf.read_bytes()[:300])  # truncated JPEG
    (root / "empty.png").write_bytes(b"")
    (root / "README.txt").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(b"ignored")
    del good
    return root


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def prepared(folder, tfds_dir):
    return data.prepare_folder([folder], data_dir=tfds_dir, workers=2)


def test_prepare_skips_and_counts_corrupt_files(prepared, folder, tfds_dir):
    r = prepared.report
    assert r["num_prepared"] == len(GOOD) == len(prepared)
    assert r["num_skipped"] == 2
    reasons = {s["path"]: s["reason"] for s in r["skipped"]}
    assert set(reasons) == {"photos/corrupt.jpg", "photos/empty.png"}
    assert "empty" in reasons["photos/empty.png"]
    assert "corrupt" in reasons["photos/corrupt.jpg"] or "truncated" in reasons["photos/corrupt.jpg"]
    assert r["num_ignored_non_image"] == 1 and not r["reused"]
    # The counts are stored with the dataset (TFDS MetadataDict -> metadata.json).
    md = json.loads((tfds_dir / "arbitrary_nst_images" / r["name"] / "1.0.0" / "metadata.json").read_text())
    assert md["num_skipped"] == 2 and md["num_prepared"] == len(GOOD)
    assert list((tfds_dir / "arbitrary_nst_images" / r["name"] / "1.0.0").glob("*.array_record-*"))
    assert "tensorflow" not in sys.modules  # prepared and read without TensorFlow


def test_prepare_skips_blank_images(tmp_path):
    """A blank image (pixel std < FLAT_CROP_STD) gives only flat crops: as content it made the
    gradient overflow at step 1 (every instance norm divides by sqrt(eps)). It is skipped with
    its reason; an image that is nearly blank but not quite is kept."""
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.full((80, 90, 3), 255, np.uint8)).save(d / "white.png")
    Image.fromarray(np.full((80, 90), 40, np.uint8)).save(d / "grey.png")  # mode L
    Image.fromarray(np.full((80, 90, 3), (200, 30, 30), np.uint8)).save(d / "red.png")
    faint = np.full((80, 90, 3), 128, np.uint8)
    faint[::2] += 6  # std ~3/255 > FLAT_CROP_STD
    Image.fromarray(faint).save(d / "faint.png")
    Image.fromarray(_smooth(80, 90, 1)).save(d / "photo.png")
    r = data.prepare_folder([d], data_dir=tmp_path / "tfds", workers=1).report
    reasons = {s["path"]: s["reason"] for s in r["skipped"]}
    assert set(reasons) == {"imgs/white.png", "imgs/grey.png", "imgs/red.png"}
    assert r["num_prepared"] == 2
    assert all(v.startswith("blank (pixel std 0.0000 < 0.01)") for v in reasons.values())


def test_long_panoramas_are_kept_and_too_small_ones_report_their_size(tmp_path, capfd):
    # the long-side cap (3 x max_source_side) cut a 3000 x 100 panorama to 1536 x 51, which
    # was then skipped as "too small (1536 x 51 ...)" although its short side is >= 64
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(_smooth(100, 3000, 1)).save(d / "scroll.png")
    Image.fromarray(_smooth(50, 2000, 2)).save(d / "thin.png")
    Image.fromarray(_smooth(80, 90, 3)).save(d / "photo.png")
    Image.fromarray(_smooth(64, 7000, 4)).save(d / "frieze.png")  # 109:1: crops need 28000 px
    import tensorflow_datasets as tfds

    tfds.enable_progress_bar()  # (as in a fresh process: TFDS' bars are on)
    capfd.readouterr()
    ds = data.prepare_folder([d], data_dir=tmp_path / "tfds", workers=1)
    err = capfd.readouterr().err  # without progress, no bars (TFDS' printed through train's)
    assert "Generating splits" not in err and "Shuffling" not in err, err[-500:]
    reasons = {s["path"]: s["reason"] for s in ds.report["skipped"]}
    assert reasons == {"imgs/thin.png": "too small (2000 x 50 < 64 px)",
                       "imgs/frieze.png": "too elongated (7000 x 64: at a short side of 64 px "
                                          "or more the long side is 7000 > 6144 px)"}
    shapes = {ds.path(i): ds.get(i).shape[:2] for i in range(len(ds))}
    assert shapes == {"imgs/scroll.png": (64, 1920), "imgs/photo.png": (80, 90)}


def test_a_killed_preparation_leaves_nothing_behind_the_next_one(tmp_path):
    # kill -9 during a preparation left TFDS' incomplete.XXXXXX_1.0.0 folder (with partial
    # array_record files) forever; the next preparation (holding the lock) removes it
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(_smooth(80, 90, 3)).save(d / "photo.png")
    version_dir = Path(data.folder_builder([d], data_dir=tmp_path / "tfds").data_dir)
    stale = version_dir.parent / f"incomplete.AB12CD_{version_dir.name}"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "part.array_record-00000-of-00001").write_bytes(b"partial")
    ds = data.prepare_folder([d], data_dir=tmp_path / "tfds", workers=1)
    assert len(ds) == 1 and not stale.exists()
    assert sorted(p.name for p in version_dir.parent.iterdir()) == [version_dir.name]


def test_preparing_leaves_nothing_in_the_temp_folder(tmp_path, monkeypatch):
    # TFDS' DatasetBuilder.__init__ calls DatasetInfo.initialize_from_bucket for a dataset not
    # prepared yet, which makes tempfile.mkdtemp("tfds") before finding the (disabled) GCS
    # bucket empty and never removes it: one empty /tmp/tmpXXXXtfds per preparation
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(_smooth(80, 90, 3)).save(d / "photo.png")
    assert len(data.prepare_folder([d], data_dir=tmp_path / "tfds", workers=1)) == 1
    assert len(data.prepare_folder([d], data_dir=tmp_path / "tfds", workers=1)) == 1  # reused
    assert sorted(p.name for p in tmp.iterdir()) == []


def test_a_catalog_builder_leaves_nothing_in_the_temp_folder(tmp_path, monkeypatch):
    # The same TFDS leak for a named (tfds:NAME) dataset not prepared yet, whose DatasetInfo is
    # TFDS' own; making the builder reads nothing from the network (DTD's is not downloaded)
    tmp = tmp_path / "tmp"
    (tmp / "tmpearliertfds").mkdir(parents=True)  # (someone else's: left alone)
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    b = data._catalog_builder("dtd", str(tmp_path / "tfds"))
    assert b.name == "dtd" and not (Path(b.data_dir) / "dataset_info.json").exists()
    assert sorted(p.name for p in tmp.iterdir()) == ["tmpearliertfds"]
    with pytest.raises(ConfigError, match="tfds:no_such_dataset_xyz"):
        data._catalog_builder("no_such_dataset_xyz", str(tmp_path / "tfds"))


def test_an_offline_catalog_download_fails_at_once(tmp_path, monkeypatch):
    """Offline, ``tfds:dtd`` not prepared yet: TFDS retried the download for 3.5 minutes before
    its error. No host name resolving (the dataset's homepage, TFDS' bucket) is that error at
    once; one that resolves (a network that blocks only the other) still downloads."""
    import socket
    import types

    calls = []

    class Builder:
        data_dir = str(tmp_path / "tfds" / "dtd" / "3.0.1")
        info = types.SimpleNamespace(homepage="https://www.robots.ox.ac.uk/~vgg/data/dtd/")

        def download_and_prepare(self, **kw):
            calls.append(kw)
            raise RuntimeError("stop here")

    monkeypatch.setattr(data, "_catalog_builder", lambda name, root: Builder())
    looked_up = []

    def no_dns(host, *a, **k):
        looked_up.append(host)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(ConfigError, match=r"^tfds:dtd: not prepared under .*, and this machine "
                       r"is offline \(name lookup failed: www\.robots\.ox\.ac\.uk: Name or "
                       r"service not known; storage\.googleapis\.com: Name or service not "
                       r"known\)"):
        data.source_from_catalog("dtd", data_dir=tmp_path / "tfds")
    assert not calls and looked_up == ["www.robots.ox.ac.uk", "storage.googleapis.com"]

    def bucket_only(host, *a, **k):
        if host != data.TFDS_BUCKET_HOST:
            raise socket.gaierror(-2, "Name or service not known")
        return [()]

    monkeypatch.setattr(socket, "getaddrinfo", bucket_only)
    with pytest.raises(ConfigError, match="download_and_prepare failed .*stop here"):
        data.source_from_catalog("dtd", data_dir=tmp_path / "tfds")
    assert calls == [{"file_format": "array_record"}]


def test_stored_size_keeps_the_short_side_at_least_min_source_side():
    # (with min_source_side = max_source_side, flooring the long side stored 258 x 257 at
    # 256 x 255, then skipped it as too small)
    from arbitrary_nst.images import _scaled_size

    for max_side, min_side in ((256, 256), (512, 64), (64, 64)):
        for w in range(min_side, 3 * max_side + 40, 7):
            for h in range(min_side, w + 1, 5):
                cap = data._stored_cap(w, h, max_side, min_side)
                stored = _scaled_size(w, h, cap / max(w, h)) if cap else (w, h)
                assert min(stored) >= min_side, (w, h, max_side, min_side, stored)
                assert max(stored) <= max(w, h)  # never upscaled


def test_records_decode_to_the_source_images(prepared, folder):
    paths = {prepared.path(i): i for i in range(len(prepared))}
    assert set(paths) == {f"photos/{k}" for k in GOOD}
    for name, size in GOOD.items():
        got = prepared.get(paths[f"photos/{name}"])
        assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3
        ref = load_image(folder / name)
        if size is None:  # capped: short side 512, aspect kept
            assert min(got.shape[:2]) == 512 and got.shape[:2] == (512, 689)
            ref = np.asarray(Image.fromarray((ref * 255 + 0.5).astype(np.uint8)).resize((689, 512), Image.LANCZOS)) / 255.0
        else:
            assert got.shape[1::-1] == size
        err = np.abs(got / 255.0 - ref).mean()
        assert err < 0.02, (name, err)
    # A small clean JPEG is stored byte-for-byte: decodes to exactly the same pixels.
    a = prepared.get(paths["photos/a_rgb.jpg"])
    assert np.array_equal(a, np.asarray(Image.open(folder / "a_rgb.jpg").convert("RGB")))


def test_tfds_data_source_decodes_with_pillow(prepared, folder, tfds_dir):
    b = data.folder_builder([folder], data_dir=tfds_dir)
    assert b.builder_config.name == prepared.report["name"]
    ds = b.as_data_source("train")  # TFDS's own NumPy decoding (Pillow)
    assert len(ds) == len(prepared)
    ex = ds[0]
    assert np.array_equal(ex["image"], prepared.get(0))
    assert ex["path"].decode() == prepared.path(0)
    assert b.info.metadata["num_skipped"] == 2


def test_reuse_and_stale_folder_gets_a_new_dataset(prepared, folder, tfds_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=data.log.name):
        again = data.prepare_folder([folder], data_dir=tfds_dir)
    assert again.report["reused"] and again.report["num_skipped"] == 2
    # the line train.py shows (there was none when a preparation was reused)
    assert (f"{again.report['name']}: {len(again)} images, prepared earlier under "
            f"{again.report['data_dir']} (reused); 2 files were left out then") in caplog.text
    # A copy elsewhere (`cp -r`: new times, new place) holds the same images: the same dataset,
    # reused (it was prepared again, and a resumed training said "the training images differ").
    import shutil

    copy = tmp_path / "photos"
    shutil.copytree(folder, copy, copy_function=shutil.copyfile)
    first = data.prepare_folder([copy], data_dir=tfds_dir)
    assert first.report["reused"] and first.report["name"] == again.report["name"]
    assert first.report["dirs"] == [str(copy)]
    # A changed folder (new file) -> a different config name, prepared from scratch.
    Image.fromarray(_smooth(90, 120, 9)).save(copy / "new.png")
    changed = data.prepare_folder([copy], data_dir=tfds_dir)
    assert changed.report["name"] != first.report["name"]
    assert not changed.report["reused"] and len(changed) == len(first) + 1


def test_fingerprint_sees_contents_not_times_or_places(tmp_path, monkeypatch):
    """Another image with the same name, size and modification time (`cp -p`, `rsync -t`,
    two quick rewrites) is another dataset; the same bytes touched, or in a copy of the
    folder, are the same one. Digests are cached by file identity (size, mtime, ctime,
    inode): a re-scan reads only what changed."""
    monkeypatch.setattr(data._DigestCache, "RACY_S", 0.0)  # (files written just now: cached)
    monkeypatch.setattr(data, "DIGEST_FALLBACK", str(tmp_path / "user" / "digests.json"))
    d = tmp_path / "imgs"
    d.mkdir()
    raw = np.zeros((64, 64, 3), np.uint8)
    Image.fromarray(raw).save(d / "a.bmp")
    Image.fromarray(raw).save(d / "b.bmp")
    tfds = tmp_path / "tfds"

    def name(folder=d):
        return data.folder_builder([folder], data_dir=tfds).builder_config.name

    first = name()
    cache = json.loads((tfds / "file_digests.json").read_text())["files"]
    assert sorted(cache) == [os.path.realpath(d / f) for f in ("a.bmp", "b.bmp")]
    st = os.stat(d / "a.bmp")
    os.utime(d / "a.bmp", ns=(st.st_atime_ns, st.st_mtime_ns - 5 * 10**9))  # touched
    assert name() == first
    other = raw.copy()
    other[3, 4] = 200  # same size: a BMP's length depends on the shape only
    Image.fromarray(other).save(d / "b.bmp")
    st_b = os.stat(d / "b.bmp")
    os.utime(d / "b.bmp", ns=(st_b.st_atime_ns, os.stat(d / "a.bmp").st_mtime_ns))
    assert st_b.st_size == st.st_size
    changed = name()
    assert changed != first
    Image.fromarray(raw).save(d / "b.bmp")
    assert name() == first  # back to the first images
    # the cache is what is read for unchanged files: a stale digest planted for an unchanged
    # identity is believed (proof that nothing was read), a new mtime is not
    doc = json.loads((tfds / "file_digests.json").read_text())
    doc["files"][os.path.realpath(d / "a.bmp")][4] = "0" * 32
    (tfds / "file_digests.json").write_text(json.dumps(doc))
    assert name() != first
    os.utime(d / "a.bmp", ns=(st.st_atime_ns, st.st_mtime_ns - 9 * 10**9))
    assert name() == first
    # a damaged cache is read again from the files
    (tfds / "file_digests.json").write_text("{not json")
    assert name() == first
    # a copy without times, elsewhere: the same dataset
    import shutil

    copy = tmp_path / "elsewhere" / "imgs"
    shutil.copytree(d, copy, copy_function=shutil.copyfile)
    assert name(copy) == first
    # rewritten in place with the old mtime put back (exiftool -P, cp -p over it): same inode,
    # size and mtime, only the ctime tells (the cache served the old digest)
    before = os.stat(d / "a.bmp")
    with open(d / "a.bmp", "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\x01\x02\x03")
    os.utime(d / "a.bmp", ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(d / "a.bmp")
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    rewritten = name()
    assert rewritten != first
    Image.fromarray(raw).save(d / "a.bmp")
    assert name() == first
    # a file that is gone is dropped from the cache
    (d / "b.bmp").unlink()
    name()
    cache = json.loads((tfds / "file_digests.json").read_text())["files"]
    assert os.path.realpath(d / "b.bmp") not in cache and os.path.realpath(d / "a.bmp") in cache
    assert not (tmp_path / "user").exists()  # (the per-user file only when data_dir fails)


def test_digest_cache_fallback_merge_and_racy_files(tmp_path, monkeypatch, caplog):
    """A data_dir that cannot be written read every byte again on every start: the per-user
    file takes the digests. Two jobs scanning other folders at once kept only one's entries:
    saving merges under a lock. Files changed in the last RACY_S seconds are not cached (on
    coarse-timestamp file systems a rewrite in the same tick keeps every field)."""
    user = tmp_path / "user" / "digests.json"
    monkeypatch.setattr(data, "DIGEST_FALLBACK", str(user))
    folders = {}
    for role in ("photos", "paint"):
        folders[role] = tmp_path / role
        folders[role].mkdir()
        for i in range(2):
            Image.fromarray(np.full((40, 40, 3), 10 * i, np.uint8)).save(folders[role] / f"{i}.bmp")
    reads = []
    real_digest = data._file_digest
    monkeypatch.setattr(data, "_file_digest", lambda p: reads.append(p) or real_digest(p))
    # written just now: read, not cached
    root = tmp_path / "tfds"
    data._scan_dirs([str(folders["photos"])], digest_cache=data._DigestCache(root))
    assert len(reads) == 2 and not (root / "file_digests.json").exists()
    monkeypatch.setattr(data._DigestCache, "RACY_S", 0.0)
    # two caches loaded before either saved: both folders' entries end up in the file
    a, b = data._DigestCache(root), data._DigestCache(root)
    data._scan_dirs([str(folders["photos"])], digest_cache=a)
    data._scan_dirs([str(folders["paint"])], digest_cache=b)
    files = json.loads((root / "file_digests.json").read_text())["files"]
    assert sorted(files) == sorted(os.path.realpath(folders[r] / f"{i}.bmp")
                                   for r in ("photos", "paint") for i in range(2))
    reads.clear()
    data._scan_dirs([str(folders["photos"]), str(folders["paint"])],
                    digest_cache=data._DigestCache(root))
    assert reads == []
    # an unwritable data_dir: the per-user file, then no reads
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file_digests.json").mkdir()  # (cannot be replaced by a file, even by root)
    data._scan_dirs([str(folders["photos"])], digest_cache=data._DigestCache(ro))
    assert json.loads(user.read_text())["files"]
    reads.clear()
    data._scan_dirs([str(folders["photos"])], digest_cache=data._DigestCache(ro))
    assert reads == []
    # neither writable: one warning saying what it costs
    user.unlink()
    user.mkdir()
    (folders["photos"] / "2.bmp").write_bytes((folders["photos"] / "0.bmp").read_bytes())
    with caplog.at_level(logging.WARNING, logger=data.log.name):
        data._scan_dirs([str(folders["photos"])], digest_cache=data._DigestCache(ro))
    assert "cannot write the file digest cache" in caplog.text
    assert "reads every training image again" in caplog.text


def test_prepare_config_errors(tmp_path, folder):
    with pytest.raises(ConfigError, match="no such directory"):
        data.prepare_folder([tmp_path / "missing"], data_dir=tmp_path)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        data.prepare_folder([tmp_path / "empty_dir"], data_dir=tmp_path)
    ev = tmp_path / "eval" / "style"
    ev.mkdir(parents=True)
    with pytest.raises(ConfigError, match="evaluation"):
        data.prepare({"content_dirs": [str(folder)], "style_dirs": [str(ev)], "data_dir": str(tmp_path)})
    # the guard was bypassed by a link to it, a parent folder, a capital E, a file link
    (tmp_path / "alias").symlink_to(ev)
    parent = tmp_path / "Evalset"
    (parent / "Eval" / "x").mkdir(parents=True)
    (tmp_path / "mixed").mkdir()
    (ev / "p.png").write_bytes((folder / sorted(os.listdir(folder))[0]).read_bytes())
    (tmp_path / "mixed" / "p.png").symlink_to(ev / "p.png")
    for d in (tmp_path / "alias", tmp_path, parent, tmp_path / "mixed"):
        with pytest.raises(ConfigError, match="evaluation"):
            data.prepare({"content_dirs": [str(folder)], "style_dirs": [str(d)],
                          "data_dir": str(tmp_path / "prepared")})
    # a folder spelled through eval/.. is not in it (it was: "contains evaluation images")
    spelled = str(tmp_path / "eval" / ".." / "mixed")
    (tmp_path / "mixed" / "p.png").unlink()
    Image.fromarray(_smooth(64, 64, 7)).save(tmp_path / "mixed" / "q.png")
    src = data.prepare({"content_dirs": [str(folder)], "style_dirs": [spelled],
                        "data_dir": str(tmp_path / "prepared")})
    assert src["style"].report["num_prepared"] == 1
    with pytest.raises(ConfigError, match="unknown field"):
        data.prepare({"sourse": "synthetic"})
    with pytest.raises(ConfigError, match="unknown source"):
        data.prepare({"source": "ftp"})
    with pytest.raises(ConfigError, match="tfds:"):
        data.source_from_catalog("no_such_dataset_xyz", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------


def test_augment_content_shapes_ranges_determinism():
    img = _smooth(300, 420, 1)
    a = data.augment_content(img, np.random.default_rng(5), 128)
    b = data.augment_content(Image.fromarray(img), np.random.default_rng(5), 128)
    assert a.shape == (128, 128, 3) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b)
    c = data.augment_content(img, np.random.default_rng(6), 128)
    assert not np.array_equal(a, c)
    small = data.augment_content(_smooth(40, 60, 2), np.random.default_rng(0), 64)  # upscaled
    assert small.shape == (64, 64, 3)
    # No scaling jitter + square image of the crop size: the crop is the image itself.
    sq = _smooth(96, 96, 3)
    same = data.augment_content(sq, np.random.default_rng(0), 96, scale_range=(1.0, 1.0))
    assert np.abs(same - sq / 255.0).max() < 1e-6
    raw = data.augment_content(img, np.random.default_rng(5), 128, as_uint8=True)
    assert raw.dtype == np.uint8 and np.array_equal(raw * np.float32(1 / 255), a)


def test_augment_style_magenta_ranges_and_determinism():
    img = _smooth(300, 400, 2)
    x = data.augment_style(img, np.random.default_rng(1))
    assert x.shape == (256, 256, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.array_equal(x, data.augment_style(img, np.random.default_rng(1)))
    assert not np.array_equal(x, data.augment_style(img, np.random.default_rng(2)))
    assert data.magenta_style_resize_range(256) == (258, 456)
    assert data.augment_style(img, np.random.default_rng(0), 64, (70, 90)).shape == (64, 64, 3)
    # strength 0: no colour jitter, no flips -> a constant image stays constant.
    const = np.full((300, 300, 3), (10, 200, 90), np.uint8)
    y = data.augment_style(const, np.random.default_rng(3), strength=0.0)
    assert np.abs(y - np.array([10, 200, 90]) / 255.0).max() < 1e-6
    # strength 1: brightness/saturation/hue change the colour over seeds.
    means = [data.augment_style(const, np.random.default_rng(s)).mean((0, 1)) for s in range(8)]
    assert np.std(means, axis=0).min() > 0.05
    with pytest.raises(ValueError):
        data.augment_style(img, np.random.default_rng(0), 256, (200, 300))


def test_color_jitter_matches_tf_adjust_semantics():
    rng = np.random.default_rng(0)
    px = rng.random((50, 1, 3)).astype(np.float32)
    bright, sat, hue = 0.1, 1.4, -0.15
    got = data.color_jitter(px, bright, sat, hue)
    for p, g in zip(px[:, 0], got[:, 0]):
        q = np.clip(p + bright, 0, 1)
        h, s, v = colorsys.rgb_to_hsv(*q)
        want = colorsys.hsv_to_rgb((h + hue) % 1.0, min(s * sat, 1.0), v)
        assert np.allclose(g, want, atol=2e-6)
    assert np.allclose(data.color_jitter(px), px)


# ------------------------------------------------------------------------------------------
# Sources, sampler, loader
# ------------------------------------------------------------------------------------------


def test_synthetic_source_is_deterministic_by_index():
    s = data.SyntheticSource("style", 10)
    a, b = s.get(3), s.get(3)
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape[2] == 3
    assert not np.array_equal(a, s.get(4))
    c = data.SyntheticSource("content", 10).get(3)
    assert c.shape[0] >= 224 and c.shape[1] >= 224
    with pytest.raises(IndexError):
        s.get(10)
    srcs = data.prepare({"source": "synthetic", "synthetic_count": 7})
    assert len(srcs["content"]) == len(srcs["style"]) == 7


def test_epoch_sampler_permutations_and_weights():
    s = data.EpochSampler([5, 7], None, seed=1, stream=0)
    e0, e1 = s.indices(0, 12), s.indices(12, 12)
    assert sorted(e0) == list(range(12)) and sorted(e1) == list(range(12))
    assert not np.array_equal(e0, e1)
    w = data.EpochSampler([10, 100], [3.0, 1.0], seed=1, stream=1)
    ep = w.epoch(0)
    assert len(ep) == 110
    assert (ep < 10).sum() in (82, 83)  # 75% of 110 from the small folder
    assert np.bincount(ep[ep < 10]).min() >= 8  # repeats spread evenly over its images


def _cfg(**kw):
    c = {"source": "synthetic", "synthetic_count": 13, "image_size": 64, "style_size": 48}
    c.update(kw)
    return c


def _batches(loader, n):
    out = [next(loader) for _ in range(n)]
    loader.close()
    return out


def test_loader_is_a_pure_function_of_seed_and_step():
    srcs = data.prepare(_cfg())
    full = _batches(data.make_loader(_cfg(), batch_size=3, seed=7, num_workers=2, sources=srcs), 6)
    b = full[0]
    assert b["content"].shape == (3, 64, 64, 3) and b["style"].shape == (3, 48, 48, 3)
    # data.device_augment (default): uint8 crops + the style jitter parameters for the step.
    assert b["content"].dtype == b["style"].dtype == np.uint8 and b["style_jitter"].shape == (3, 3)
    again = _batches(data.make_loader(_cfg(), batch_size=3, seed=7, num_workers=0, sources=srcs), 6)
    for x, y in zip(full, again):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    assert not np.array_equal(full[0]["content"], full[1]["content"])  # different step
    other = _batches(data.make_loader(_cfg(), batch_size=3, seed=8, num_workers=1, sources=srcs), 1)
    assert not np.array_equal(full[0]["style"], other[0]["style"])  # different seed
    # Resume at step 4 = the tail of the uninterrupted stream (across the epoch boundary).
    resumed = _batches(data.make_loader(_cfg(), batch_size=3, seed=7, start_step=4, num_workers=3, sources=srcs), 2)
    for x, y in zip(full[4:], resumed):
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_loader_workers_do_not_change_batches(prepared):
    srcs = {"content": prepared, "style": prepared}
    cfg = {"image_size": 64, "style_size": 64, "style_resize_range": (66, 120)}
    one = _batches(data.make_loader(cfg, batch_size=4, seed=3, num_workers=1, prefetch=1, sources=srcs), 3)
    three = _batches(data.make_loader(cfg, batch_size=4, seed=3, num_workers=3, prefetch=3, sources=srcs), 3)
    for x, y in zip(one, three):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    loader = data.make_loader(cfg, batch_size=4, seed=3, num_workers=2, sources=srcs)
    for _ in range(2):
        next(loader)
    st = loader.stats()
    loader.close()
    assert st["batches"] == 2 and st["images"] == 16 and loader.images_per_second > 0
    with pytest.raises(StopIteration):
        next(loader)


def test_style_unsharp_sharpens_the_style_crops_and_nothing_else(prepared):
    """data.style_unsharp: the same draws (crop, flips, jitter) with the style crops sharpened
    by PIL's unsharp mask (as sharpening the crop by hand gives); contents unchanged."""
    srcs = {"content": prepared, "style": prepared}
    cfg = {"image_size": 48, "style_size": 48, "style_resize_range": (50, 90),
           "augment_strength": 0.0}
    plain, sharp = (next(data.make_loader({**cfg, "style_unsharp": u}, batch_size=3, seed=5,
                                          num_workers=0, sources=srcs))
                    for u in (None, (0.75, 50)))
    assert np.array_equal(plain["content"], sharp["content"])
    by_hand = [np.asarray(Image.fromarray(x).filter(ImageFilter.UnsharpMask(0.75, 50, 0)))
               for x in plain["style"]]
    assert np.array_equal(sharp["style"], np.stack(by_hand))
    assert not np.array_equal(sharp["style"], plain["style"])
    # (float crops, the path without device_augment: the same sharpened pixels / 255)
    f = next(data.make_loader({**cfg, "style_unsharp": (0.75, 50), "device_augment": False},
                              batch_size=3, seed=5, num_workers=0, sources=srcs))
    assert np.abs(f["style"] * 255 - sharp["style"]).max() < 1e-3


def test_weighted_mixture_of_folders(prepared):
    mix = data.MixtureSource([prepared, data.SyntheticSource("style", 4)], [0.0, 1.0], name="style")
    loader = data.Loader(prepared, mix, batch_size=4, seed=0, num_workers=0, image_size=32, style_size=32)
    ci, si = loader.indices(0)
    assert (si >= len(prepared)).all()  # weight 0 on the folder: only synthetic styles
    next(loader)
    loader.close()


def test_npz_export_roundtrip(prepared, tmp_path):
    srcs = {"content": prepared, "style": data.SyntheticSource("style", 5)}
    out = tmp_path / "subset.npz"
    s = data.export_arrays({}, out, n_content=4, n_style=50, size=96, sources=srcs)
    assert s["n_content"] == 4 and s["n_style"] == 5 and out.exists()
    with np.load(out, allow_pickle=False) as z:
        assert z["content_jpeg"].dtype == np.uint8
    got = data.prepare({"source": f"npz:{out}"})
    assert len(got["content"]) == 4 and len(got["style"]) == 5
    im = got["content"].get(0)
    assert im.dtype == np.uint8 and min(im.shape[:2]) <= 96 and max(im.shape[:2]) <= 192
    assert got["content"].path(0).startswith("photos/")
    b = next(data.make_loader({"source": f"npz:{out}", "image_size": 64, "style_size": 64,
                               "style_resize_range": (66, 100)}, batch_size=2, seed=0, num_workers=1))
    assert b["content"].shape == (2, 64, 64, 3)
    with pytest.raises(ConfigError, match="MB"):
        data.export_arrays({}, tmp_path / "big.npz", 4, 5, 96, sources=srcs, max_mb=0.001)
    with pytest.raises(ConfigError, match="no such file"):
        data.NpzSource(tmp_path / "missing.npz", "content")


def test_a_folder_of_unreadable_files_is_one_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("hello")
    with pytest.raises(ConfigError, match=r"none of the 2 image files could be read \(e.g. "
                       + re.escape(f"{bad / 'empty.jpg'}: empty file")):  # (where it is)
        data.prepare_folder([bad], data_dir=tmp_path / "prepared")


@pytest.mark.parametrize("field, value", [("image_size", None), ("augment_strength", "strong"),
                                          ("content_scale_range", (1.0,)),
                                          ("style_resize_range", (300.5, 400)),
                                          ("max_source_side", 32), ("image_size", 4),
                                          ("style_size", 31)])
def test_data_config_values_of_the_wrong_type_are_one_line(tmp_path, field, value):
    with pytest.raises(ConfigError, match=field) as e:
        data.prepare({"source": "synthetic", field: value, "data_dir": str(tmp_path)})
    assert "\n" not in str(e.value)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="data_dir .* is a file"):
        data.prepare({"source": "synthetic", "data_dir": str(tmp_path / "afile")})


def test_cli_refuses_zero_workers_and_sizes(folder, tfds_dir, capsys):
    assert data.main(["prepare", "--content-dir", str(folder), "--style-dir", str(folder),
                      "--data-dir", str(tfds_dir), "--workers", "0"]) == 1
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert data.main(["prepare", "--content-dir", str(folder), "--style-dir", str(folder),
                      "--data-dir", str(tfds_dir), "--max-source-side", "0"]) == 1
    assert "max_source_side" in capsys.readouterr().err


def test_cli_prepare_skip_lines_escape_control_characters(tmp_path, capsys):
    """A file name holding a newline split its "skipped" line in two (ESC went to the
    terminal)."""
    d = tmp_path / "p"
    d.mkdir()
    Image.fromarray(_smooth(64, 64, 1)).save(d / "ok.png")
    (d / "bad\nname.jpg").write_bytes(b"x")
    (d / "esc\x1b[31m.jpg").write_bytes(b"x")
    assert data.main(["prepare", "--content-dir", str(d), "--data-dir",
                      str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("skipped ")]
    assert len(lines) == 2 and "\x1b" not in out, out
    assert lines[0].startswith(f"skipped {d}/bad name.jpg: ")
    assert lines[1].startswith(f"skipped {d}/esc\\x1b[31m.jpg: ")


def test_default_data_dir_follows_the_cache_variable(folder, tmp_path, monkeypatch, capsys):
    """Prepared data went to ~/.cache/arbitrary_nst/tfds whatever $ARBITRARY_NST_CACHE said (the
    weights follow it: a user who moved the cache off a small home still filled it)."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    assert data._cfg(None)["data_dir"] == str(tmp_path / "cache" / "tfds")
    assert data.main(["prepare", "--content-dir", str(folder)]) == 0
    assert "total: " in capsys.readouterr().out
    assert (tmp_path / "cache" / "tfds" / data.BUILDER_NAME).is_dir()
    assert not home.exists()
    # unset or empty: the home's cache; an explicit folder stays as given
    monkeypatch.setenv(weights.CACHE_ENV, "")
    assert data._cfg(None)["data_dir"] == str(home / ".cache" / "arbitrary_nst" / "tfds")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    assert data._cfg({"data_dir": "~/d"})["data_dir"] == str(home / "d")


def test_cli_prepare_prints_counts(folder, tmp_path, capsys):
    tfds_dir = tmp_path / "tfds"  # (its own: the module's has the folder prepared already)
    rc = data.main(["prepare", "--content-dir", str(folder), "--style-dir", str(folder), "--data-dir", str(tfds_dir)])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"skipped {folder / 'corrupt.jpg'}:" in out and f"skipped {folder / 'empty.png'}:" in out
    # (one folder as both roles is prepared once, now: the style row finds the content row's;
    # its images are counted once: the total said 12 images of a folder of 6)
    assert f"total: {len(GOOD)} images ({len(GOOD)} prepared now, 0 prepared earlier), " \
        "2 skipped" in out, out
    # a rerun finds both on disk: it said "12 prepared" of datasets it only reused
    assert data.main(["prepare", "--content-dir", str(folder), "--style-dir", str(folder),
                      "--data-dir", str(tfds_dir)]) == 0
    out = capsys.readouterr().out
    assert f"total: {len(GOOD)} images (0 prepared now, {len(GOOD)} prepared earlier), " \
        "2 skipped" in out, out
    # a copy of the folder elsewhere, listed with it in one role: the same dataset (its
    # images would count twice, as the folder listed twice, which is refused by its path)
    copy = tmp_path / "elsewhere" / folder.name
    shutil.copytree(folder, copy)
    assert data.main(["prepare", "--style-dir", str(folder), "--style-dir", str(copy),
                      "--data-dir", str(tfds_dir)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {copy}: holds the same images as {folder} (a copy of it), also listed in "
        "style_dirs: they would count twice; list one")


def test_the_prepare_table_keeps_the_fingerprint_of_a_long_name():
    name = "a_very_long_folder_name_of_paintings_by_many_painters-20b60ef5c4b8"
    cut = data._fit_name(name, 40)
    assert len(cut) == 40 and cut.endswith("-20b60ef5c4b8") and cut.startswith("a_very_long")
    assert data._fit_name("short-20b60ef5c4b8", 40) == "short-20b60ef5c4b8"


def test_cli_eval_folder_refusal_names_a_way_that_cli_has(folder, tmp_path, capsys):
    """The refusal said "set allow_eval_dirs=True", which `data prepare` had no way to set."""
    ev = tmp_path / "eval"
    shutil.copytree(folder, ev)
    args = ["prepare", "--content-dir", str(ev), "--data-dir", str(tmp_path / "tfds")]
    assert data.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--allow-eval-dirs" in err and err.count("\n") == 1
    assert data.main(args + ["--allow-eval-dirs"]) == 0
    assert f"total: {len(GOOD)} images ({len(GOOD)} prepared now, 0 prepared earlier)" in \
        capsys.readouterr().out


def test_prepare_does_not_print_tfds_download_lines(folder, tmp_path, capfd):
    """TFDS printed "Downloading and preparing dataset Unknown size (download: Unknown size,
    ...)" and "... downloaded and prepared to ..." to stdout for a local folder."""
    rc = data.main(["prepare", "--content-dir", str(folder), "--data-dir", str(tmp_path / "tfds")])
    cap = capfd.readouterr()
    assert rc == 0 and "total:" in cap.out, cap
    for text in ("Downloading", "Unknown size", "Subsequent calls"):
        assert text not in cap.out + cap.err
    # only --content-dir: that folder alone (was: prepared, then "style_dirs is empty", exit 1)
    assert "content" in cap.out and "style " not in cap.out


def test_an_empty_role_is_refused_before_anything_is_prepared(folder, tmp_path):
    with pytest.raises(ConfigError, match="style_dirs is empty"):
        data.prepare({"content_dirs": [str(folder)], "style_dirs": [], "data_dir": str(tmp_path / "t")})
    assert not (tmp_path / "t").exists()  # the content folder was not prepared first


def test_the_cli_names_the_missing_folder_options(folder, tmp_path, capsys):
    """``data prepare`` without folders said "data config: content_dirs is empty
    (source='folder')" (and style alone is fine); export needs both."""
    out = tmp_path / "x.npz"
    for argv, want in ((["prepare"], "error: give --content-dir and/or --style-dir: the "
                        "folders to prepare\n"),
                       (["export", "--out", str(out)], "error: export needs --content-dir and "
                        "--style-dir (got neither)\n"),
                       (["export", "--out", str(out), "--style-dir", str(folder)],
                        "error: export needs --content-dir and --style-dir (got --style-dir)\n")):
        assert data.main([*argv, "--data-dir", str(tmp_path / "t")]) == 1
        assert capsys.readouterr().err == want
    assert not (tmp_path / "t").exists() and not out.exists()


def test_a_skipped_file_is_named_where_it_is(tmp_path, capsys, caplog, monkeypatch):
    """A skipped file was named by its dataset key, whose folder name is made safe: "skipped
    my_photos/empty.jpg" for my photos é/empty.jpg, "images/..." for a folder named 照片, a
    path that does not exist. It is named as found now (the key stays the stored path)."""

    d = tmp_path / "my photos é"
    d.mkdir()
    for i in range(2):
        Image.fromarray(_smooth(96, 128, i)).save(d / f"p{i}.png")
    (d / "empty.jpg").write_bytes(b"")
    monkeypatch.setattr(data.log, "filters", [])  # (the CLI's filter of these lines)
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.data"):  # (train.py's log)
        report = data.prepare_folder([str(d)], data_dir=str(tmp_path / "t2"),
                                     progress=False).report
    assert report["skipped"][0]["path"] == "my_photos/empty.jpg"  # (the key: unchanged)
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert warned == [f"skipped {d / 'empty.jpg'}: empty file (0 bytes)"], warned
    args = ["prepare", "--content-dir", str(d), "--data-dir", str(tmp_path / "tfds")]
    assert data.main(args) == 0
    out = capsys.readouterr().out
    assert f"skipped {d / 'empty.jpg'}: empty file" in out, out
    assert data.main(args) == 0  # reused: the stored report says the same
    assert f"skipped {d / 'empty.jpg'}: empty file" in capsys.readouterr().out
    (d / "p0.png").write_bytes(b"")
    (d / "p1.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match=re.escape(f"(e.g. {d / 'empty.jpg'}: empty file")):
        data.prepare_folder([str(d)], data_dir=str(tmp_path / "t3"), progress=False)


def test_a_moved_folders_skipped_file_is_named_where_it_is_now(tmp_path, capsys):
    """A folder moved (or copied) elsewhere reuses its preparation, whose skipped files were
    named where they were then: "skipped /old/place/photos/empty.jpg", a file that is gone."""
    old, new = tmp_path / "old", tmp_path / "new"
    d = old / "photos"
    (d / "sub").mkdir(parents=True)
    new.mkdir()
    for i in range(2):
        Image.fromarray(_smooth(96, 128, i)).save(d / f"p{i}.png")
    (d / "sub" / "empty.jpg").write_bytes(b"")
    args = ["--data-dir", str(tmp_path / "tfds")]
    assert data.main(["prepare", "--content-dir", str(d), *args]) == 0
    assert f"skipped {d / 'sub' / 'empty.jpg'}: empty file" in capsys.readouterr().out
    shutil.move(str(d), str(new / "photos"))
    assert data.main(["prepare", "--content-dir", str(new / "photos"), *args]) == 0
    out = capsys.readouterr().out
    assert "0 prepared now" in out, out  # (reused: the same files under the same name)
    assert f"skipped {new / 'photos' / 'sub' / 'empty.jpg'}: empty file" in out, out
    # a dataset prepared before skipped files had a "file" is named from its key too
    r = data._skipped_where_now([{"path": "photos/sub/empty.jpg", "reason": "empty file"}],
                                [str(new / "photos")])
    assert r == [{"path": "photos/sub/empty.jpg", "reason": "empty file",
                  "file": str(new / "photos" / "sub" / "empty.jpg")}]


def test_awkward_files_in_a_users_folder(tmp_path, capsys):
    """Found by a user hunt: a FIFO named x.jpg hung preparation forever; a file name that is
    not UTF-8 crashed it (UnicodeEncodeError); .jfif/.jpe JPEGs and other files vanished
    without a word; a huge scan's skip advised a --max-pixels that did not exist; each skip
    was printed twice; a data dir that cannot be made was a traceback."""
    photos, styles = tmp_path / "photos", tmp_path / "styles"
    photos.mkdir()
    styles.mkdir()
    for i in range(2):
        Image.fromarray(_smooth(96, 128, i)).save(photos / f"p{i}.png")
    Image.fromarray(_smooth(96, 128, 5)).save(styles / "a.jfif", format="JPEG")
    Image.fromarray(_smooth(96, 128, 6)).save(styles / "b.jpe", format="JPEG")
    Image.fromarray(_smooth(96, 128, 7)).save(os.fsdecode(bytes(styles) + b"/c_\xff\xfe.png"))
    Image.fromarray(_smooth(1100, 1000, 8)).save(styles / "big.png")
    (styles / "notes.txt").write_text("not an image")
    os.mkfifo(styles / "fifo.jpg")
    args = ["prepare", "--content-dir", str(photos), "--style-dir", str(styles),
            "--data-dir", str(tmp_path / "tfds")]
    assert data.main([*args, "--max-pixels", "1000000"]) == 0
    cap = capsys.readouterr()
    assert f"skipped {styles / 'fifo.jpg'}: not a regular file" in cap.out
    assert (f"skipped {styles / 'big.png'}: too large: 1000 x 1100 = 1100000 pixels > limit 1000000; "
            "raise data.max_pixels (--max-pixels)") in cap.out
    assert ("total: 5 images (5 prepared now, 0 prepared earlier), 2 skipped, 1 other file "
            "ignored (not jpg/jpeg/png/") in cap.out
    assert "skipped" not in cap.err  # (it was printed twice: a WARNING line too)
    assert data.main([*args, "--max-pixels", "2000000"]) == 0  # another preparation
    out = capsys.readouterr().out
    assert "total: 6 images (6 prepared now, 0 prepared earlier), 1 skipped" in out, out
    (tmp_path / "afile").write_text("x")
    assert data.main([*args[:-1], str(tmp_path / "afile" / "tfds")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot create the prepared-data folder" in err
    assert err.count("\n") == 1
    with pytest.raises(ConfigError, match="num_workers"):
        data.prepare({"source": "synthetic", "num_workers": -1, "data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="prefetch"):
        data.prepare({"source": "synthetic", "prefetch": 0, "data_dir": str(tmp_path)})


def test_scans_above_pillows_own_limit_are_downscaled_too(tmp_path, monkeypatch):
    """With --max-pixels above Pillow's decompression-bomb limit the header probe failed and the
    scan was stored at full size (Pillow's limit is scaled down here to stand in for 89.5 MP)."""
    Image.fromarray(_smooth(1500, 2000, 3)).save(tmp_path / "scan.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    out = data._prepare_one((str(tmp_path / "scan.jpg"), "k", 0, 0), max_side=512, min_side=64,
                            quality=90, max_pixels=10_000_000)
    assert isinstance(out, bytes) and Image.open(io.BytesIO(out)).size == (682, 512)


def test_cli_export_checks_its_output_first_and_never_replaces_silently(folder, tfds_dir, capsys,
                                                                        tmp_path, monkeypatch):
    out = tmp_path / "sub" / "train.npz"
    args = ["export", "--content-dir", str(folder), "--style-dir", str(folder), "--data-dir",
            str(tfds_dir), "--n-content", "2", "--n-style", "3", "--size", "64"]
    assert data.main([*args, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    first = out.read_bytes()
    if os.name == "posix":
        assert out.stat().st_mode & 0o044  # not mkstemp's 0600
    # bad or existing outputs: one error line and status 1, before any folder is prepared
    monkeypatch.setattr(data, "prepare", lambda *a, **k: pytest.fail("prepared before the check"))
    for bad, reason in ((out, "exists; pass --overwrite"), (tmp_path / "x.txt", "must end in .npz"),
                        (folder / "corrupt.jpg" / "x.npz", "is not a directory")):
        assert data.main([*args, "--out", str(bad)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and reason in err and "\n" not in err, err
    assert out.read_bytes() == first
    # bad counts and caps: usage errors, before anything is prepared (a count of -5 was found
    # after the preparation, and --max-mb nan turned the cap off: the file was written)
    fresh = str(tmp_path / "fresh.npz")
    for opt, value, want in (("--n-style", "-5", "must be an integer >= 1, got '-5'"),
                             ("--n-content", "0", "must be an integer >= 1, got '0'"),
                             ("--max-mb", "nan", "must be a finite number > 0, got 'nan'"),
                             ("--max-mb", "-1", "must be a finite number > 0, got '-1'"),
                             ("--max-mb", "inf", "must be a finite number > 0, got 'inf'")):
        with pytest.raises(SystemExit) as e:
            data.main([*args, "--out", fresh, opt, value])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and f"error: argument {opt}: {want}" in err, err
    for kw, want in (({"n_style": -5}, "n_style (--n-style) must be an integer >= 1"),
                     ({"n_content": 2.5}, "n_content (--n-content) must be an integer >= 1"),
                     ({"max_mb": float("nan")}, "max_mb (--max-mb) must be a finite number > 0"),
                     ({"size": 16}, "size (--size) must be an integer >= 32")):
        with pytest.raises(ConfigError, match=re.escape(want)):
            data.export_arrays({}, fresh, **{"n_content": 2, "n_style": 2, **kw})
    assert not os.path.exists(fresh)
    monkeypatch.undo()
    assert data.main([*args, "--out", str(out), "--overwrite"]) == 0
    assert not [p.name for p in out.parent.iterdir() if p.name != "train.npz"]  # no temporaries
    # a subset of an npz: file over that file (--overwrite replaced the input with the subset)
    first = out.read_bytes()
    for given in (out, out.parent / "." / out.name):
        rc = data.main(["export", "--source", f"npz:{out}", "--out", str(given), "--overwrite",
                        "--n-content", "1", "--n-style", "1", "--size", "64"])
        assert rc == 1 and "is the npz: file this export reads" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="is the npz: file this export reads"):
        data.export_arrays({"source": f"npz:{out}"}, out, 1, 1, 64)
    assert out.read_bytes() == first
    assert data.main(["export", "--source", f"npz:{out}", "--out", str(tmp_path / "sub.npz"),
                      "--n-content", "1", "--n-style", "2", "--size", "64"]) == 0
    assert "1 content + 2 style images" in capsys.readouterr().out


def test_cli_options_a_source_does_not_read_are_refused(folder, tfds_dir, capsys, tmp_path):
    """Folders given with ``--source synthetic`` / ``npz:`` were ignored (training on procedural
    images), `prepare --source synthetic` said "1024 prepared now" of images it never prepares,
    and --style-weight without --style-dir was ignored; `train.py --set data.style_dirs=...` with
    a config whose source reads no folders (configs/smoke.py) trained without a word."""
    from arbitrary_nst import training

    cases = (
        (["export", "--source", "synthetic", "--style-dir", str(folder), "--out",
          str(tmp_path / "a.npz")], "--source synthetic reads no folders: leave out --style-dir"),
        (["prepare", "--source", "npz:x.npz", "--content-dir", str(folder), "--style-weight",
          "2"], "leave out --content-dir and --style-weight"),
        (["prepare", "--source", "synthetic"], "nothing to prepare"),
        (["prepare", "--content-dir", str(folder), "--style-weight", "2"],
         "--style-weight needs --style-dir"))
    for argv, want in cases:
        assert data.main([*argv, "--data-dir", str(tfds_dir)]) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and want in err and "\n" not in err, err
    assert not (tmp_path / "a.npz").exists()
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.py"

    def refused(overrides):
        cfg = training.load_config(smoke, overrides)
        training.refuse_unread_folders(cfg, overrides, smoke)

    for key in ("data.content_dirs", "data.style_dirs"):
        with pytest.raises(ConfigError, match=f"--set {key}: the data source is 'synthetic' "
                                              r"\(smoke.py\), which reads no folders"):
            refused([f"{key}={str(folder)!r}"])
    refused([f"data.style_dirs={str(folder)!r}", "data.source=folder"])  # (accepted)
    refused(["data.style_dirs=[]"])
    with pytest.raises(ConfigError, match="reads no folders"):
        refused(["data.source='npz:a.npz'", f"data.style_dirs={str(folder)!r}"])
    sys.path.insert(0, str(smoke.parents[1]))  # train.py, as a user runs it
    try:
        import train as train_cli
    finally:
        sys.path.remove(str(smoke.parents[1]))
    assert train_cli.main(["--config", str(smoke), "--workdir", str(tmp_path / "wd"), "--set",
                           f"data.style_dirs={str(folder)!r}"]) == 1
    assert "which reads no folders" in capsys.readouterr().err
    assert not (tmp_path / "wd").exists()


def test_default_config_fields():
    c = data.default_data_config()
    for k in ("source", "content_dirs", "style_dirs", "style_dir_weights", "data_dir", "image_size",
              "style_size", "style_resize_range", "augment_strength", "max_source_side"):
        assert k in c
    assert c["image_size"] == 256 and c["style_size"] == 256 and c["augment_strength"] == 1.0


def test_concurrent_prepares_of_one_folder_all_succeed(folder, tmp_path):
    """Jobs started together (e.g. two trainings) must not race on TFDS' final rename: one
    prepares, the others wait and reuse it."""
    import subprocess
    import sys

    import time

    # All three start preparing at the same moment, after their (slow, variable) imports.
    code = ("import json, sys, time; from arbitrary_nst import data; data._tfds(); "
            "time.sleep(max(0.0, float(sys.argv[3]) - time.time())); "
            "s = data.prepare_folder([sys.argv[1]], data_dir=sys.argv[2]); "
            "print(json.dumps([len(s), s.report['reused']]))")
    start = str(time.time() + 12)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(folder), str(tmp_path / "tfds"), start],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [n for n, _ in results] == [len(GOOD)] * 3
    assert sorted(r for _, r in results) == [False, True, True]


def test_augment_content_redraws_flat_crops():
    """A crop from a flat region is drawn again (a constant crop makes the gradient NaN, see
    data.FLAT_CROP_STD); a blank image still gives a (flat) crop."""
    img = np.full((400, 400, 3), (250, 40, 90), np.uint8)  # one colour, a textured strip on the right
    img[:, 300:] = np.random.default_rng(0).integers(0, 256, (400, 100, 3), dtype=np.uint8)
    flat_first = 0
    for seed in range(40):
        x = data.augment_content(img, np.random.default_rng(seed), 96, scale_range=(1.0, 1.0))
        assert x.shape == (96, 96, 3) and images.channel_std(x) >= data.FLAT_CROP_STD, seed
        fx, _ = np.random.default_rng(seed).random(2)  # the first crop's draws (no u: lo == hi)
        ox = min(int(fx * (400 - 96 + 1)), 400 - 96)
        flat_first += ox + 96 <= 300
    assert flat_first >= 20  # most first draws fell in the white part and were re-drawn
    blank = data.augment_content(np.zeros((200, 200, 3), np.uint8), np.random.default_rng(1), 64)
    assert blank.shape == (64, 64, 3) and blank.max() == 0


def test_flat_crops_of_a_large_jpeg_are_redrawn_from_its_full_size():
    """A stored JPEG >= 2x the crop is decoded at reduced scale (a draft, which shrinks the
    PIL image in place); a flat first crop was then drawn again with the shrunk size taken for
    the full one: "box can't exceed original image size", a traceback that a resume repeated
    at the same step (a product shot on white, a photo with a wide sky). The redrawn crops are
    the array path's (no draft), to JPEG/draft rounding."""
    yy, xx = np.mgrid[0:768, 0:1024].astype(np.float32)
    img = np.full((768, 1024, 3), 255, np.uint8)  # white, a smooth textured corner
    wave = np.sin(xx[560:, 760:] / 7) * np.cos(yy[560:, 760:] / 5)
    corner = 127 + 100 * wave[..., None]
    img[560:, 760:] = corner.astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    textured = 0
    for seed in range(12):
        lazy = Image.open(io.BytesIO(buf.getvalue()))  # (as a prepared source hands it over)
        x = data.augment_content(lazy, np.random.default_rng(seed), 128, (2.0, 2.3))
        want = data.augment_content(decoded, np.random.default_rng(seed), 128, (2.0, 2.3))
        assert lazy.size != (1024, 768)  # (the draft happened)
        assert np.abs(x - want).mean() < 0.02, seed
        textured += images.channel_std(want) >= data.FLAT_CROP_STD
    assert textured >= 6  # (the textured corner, 12% of the image, was found by most draws)


# ------------------------------------------------- mutation-testing pass 2 (augmentation, sampler)


def test_crop_offsets_reach_every_position_uniformly():
    """Random crop positions cover 0..W-size inclusive (the last row/column of positions was
    never drawn: ``fx * (W - size)`` instead of ``fx * (W - size + 1)``), about equally often."""
    rng = np.random.default_rng(0)
    w, h, size = 20, 17, 16  # 5 x positions, 2 y positions
    got = np.array([data._crop_offsets(rng, w, h, size) for _ in range(2000)])
    xs, ys = np.bincount(got[:, 0], minlength=5), np.bincount(got[:, 1], minlength=2)
    assert got[:, 0].max() == w - size and got[:, 1].max() == h - size
    assert len(xs) == 5 and len(ys) == 2
    assert xs.min() > 0.8 * 2000 / 5 and ys.min() > 0.8 * 2000 / 2
    assert set(map(tuple, (data._crop_offsets(rng, 16, 16, 16) for _ in range(5)))) == {(0, 0)}


def test_epoch_sampler_gives_the_largest_remainders_the_extra_slots():
    """With weights, each part gets ``floor(L w_k / sum w)`` slots and the leftover slots go to
    the largest fractional remainders (they went to the smallest)."""
    # L = 7, weights 2:1 -> quotas 4.67 and 2.33 -> 5 and 2
    ep = data.EpochSampler([3, 4], [2.0, 1.0], seed=0, stream=0).epoch(0)
    assert len(ep) == 7 and (ep < 3).sum() == 5
    # L = 10, weights 6:3:1: exact quotas, no extra slot
    ep = data.EpochSampler([4, 3, 3], [6.0, 3.0, 1.0], seed=2, stream=1).epoch(0)
    assert [int(((ep >= a) & (ep < b)).sum()) for a, b in ((0, 4), (4, 7), (7, 10))] == [6, 3, 1]
    ep = data.EpochSampler([2, 2, 3], [1.0, 1.0, 1.0], seed=2, stream=1).epoch(0)
    # L = 7: 2.33 each -> 2, 2, 2 and one extra slot to the first of the tied remainders
    assert [int(((ep >= a) & (ep < b)).sum()) for a, b in ((0, 2), (2, 4), (4, 7))] == [3, 2, 2]


def test_pixel_std_is_the_largest_channel_std():
    """The flat-crop check measures the largest per-channel std (as ``images.channel_std``,
    numpy float64 here): a crop varying in one channel only is not flat (the mean over
    channels called it flat and re-drew it)."""
    x = np.zeros((8, 8, 3), np.uint8)
    x[..., 1] = np.arange(8, dtype=np.uint8)[None, :] * 2  # only green varies, std ~ 4.6/255
    x[..., 0], x[..., 2] = 120, 30
    want = float(np.asarray(x, np.float64)[..., 1].std()) / 255.0
    assert data._pixel_std(Image.fromarray(x)) == pytest.approx(want, rel=1e-9)
    assert data._pixel_std(Image.fromarray(x)) >= data.FLAT_CROP_STD


def test_augment_style_jitter_ranges_at_high_strength():
    """At ``strength`` > 2 the saturation factor stays >= 0 and the hue delta within half a
    turn (the documented clamps: a negative factor inverted the colours, and a hue of more than
    half a turn is ambiguous)."""
    img = np.full((16, 16, 3), 100, np.uint8)
    for seed in range(40):
        _, jit = data.augment_style(img, np.random.default_rng(seed), 16, (16, 17), strength=4.0,
                                    defer_jitter=True)
        assert jit[1] >= 0.0 and abs(jit[2]) <= 0.5, jit
    # the same draws as documented: brightness U(-3.2, 3.2), saturation U(0, 3), hue U(-.5, .5)
    rng = np.random.default_rng(3)
    want = (rng.uniform(-3.2, 3.2), rng.uniform(0.0, 3.0), rng.uniform(-0.5, 0.5))
    _, jit = data.augment_style(img, np.random.default_rng(3), 16, (16, 17), strength=4.0,
                                defer_jitter=True)
    np.testing.assert_allclose(jit, want, rtol=1e-6)


def test_augment_style_flips_follow_the_documented_draws():
    """The first flip draw is left-right, the second up-down (as documented: the draws are part
    of the data stream's determinism), and strength 0 never flips."""
    yy, xx = np.mgrid[0:16, 0:16]
    img = np.stack([xx * 16, yy * 16, (xx * yy) % 256], -1).astype(np.uint8)  # no symmetry
    seen = set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        rng.uniform(size=3)  # brightness, saturation, hue
        lr, ud = rng.random(2) < 0.5
        want = img[:, ::-1] if lr else img
        want = want[::-1] if ud else want
        got, _ = data.augment_style(img, np.random.default_rng(seed), 16, (16, 17),
                                    defer_jitter=True)
        np.testing.assert_array_equal(got, want)
        seen.add((bool(lr), bool(ud)))
        got0, _ = data.augment_style(img, np.random.default_rng(seed), 16, (16, 17),
                                     strength=0.0, defer_jitter=True)
        np.testing.assert_array_equal(got0, img)
    assert len(seen) >= 3  # the seeds exercised several flip combinations


# ------------------------------------------------- mutation-testing pass 3 (config, sources, loader)


def test_data_config_bounds_are_inclusive_where_documented(tmp_path):
    """The documented edges are accepted (0 workers = in the caller, augment_strength 2.5, an
    empty content scale range, style_resize_range starting at style_size, min = max source
    side), the values just past them refused with their field named."""
    base = {"source": "synthetic", "data_dir": str(tmp_path)}
    c = data._cfg(dict(base, num_workers=0, augment_strength=2.5, content_scale_range=(1.0, 1.0),
                       style_size=100, style_resize_range=(100, 101), min_source_side=300,
                       max_source_side=300))
    assert c["num_workers"] == 0 and c["augment_strength"] == 2.5
    assert c["content_scale_range"] == (1.0, 1.0) and c["style_resize_range"] == (100, 101)
    assert c["min_source_side"] == c["max_source_side"] == 300
    for field, value in (("num_workers", -1), ("augment_strength", 2.51),
                         ("content_scale_range", (0.99, 1.2)),
                         ("content_scale_range", (1.2, 1.1)),
                         ("style_resize_range", (99, 200)), ("style_resize_range", (120, 120))):
        with pytest.raises(ConfigError, match=field):
            data._cfg(dict(base, style_size=100, **{field: value}))
    assert data._cfg(dict(base, style_unsharp=[0.75, 50.0]))["style_unsharp"] == (0.75, 50)
    assert data._cfg(dict(base, style_unsharp=(10, 500)))["style_unsharp"] == (10.0, 500)
    for bad in ((0, 50), (10.5, 50), (1, 0), (1, 501), (1, 50.5), (1,), "0.75,50", 3,
                (1, float("inf")), (1, float("nan")), (float("nan"), 50)):
        with pytest.raises(ConfigError, match=r"style_unsharp must be None or \(radius px"):
            data._cfg(dict(base, style_unsharp=bad))
    with pytest.raises(ConfigError, match=r"max_source_side \(299\) must be >= min_source_side"):
        data._cfg(dict(base, min_source_side=300, max_source_side=299))
    # a single folder given as a string (or a path) is a list of one folder
    assert data._cfg(dict(base, content_dirs="photos", style_dirs=tmp_path))["content_dirs"] == \
        ["photos"]
    assert data._cfg(dict(base, style_dirs=tmp_path))["style_dirs"] == [str(tmp_path)]


def test_magenta_style_resize_range_rounds_the_scaled_bounds():
    # [258, 456) at 256, scaled by style_size / 256 and rounded (by hand: 201.56 -> 202, 356.25
    # -> 356; 515.02 -> 515, 910.22 -> 910)
    assert data.magenta_style_resize_range(256) == (258, 456)
    assert data.magenta_style_resize_range(200) == (202, 356)
    assert data.magenta_style_resize_range(511) == (515, 910)
    assert data._cfg({"source": "synthetic", "style_size": 200})["style_resize_range"] == (202, 356)


def test_mixture_weights_must_not_all_be_zero():
    parts = [data.SyntheticSource("style", 2), data.SyntheticSource("style", 3)]
    for bad in ([0.0, 0.0], [1.0, -0.5], [1.0, float("nan")], [1.0]):
        with pytest.raises(ConfigError):
            data.MixtureSource(parts, bad)
    mix = data.MixtureSource(parts, [0.0, 2.0])
    assert mix.weights == [0.0, 2.0] and len(mix) == 5
    # the concatenation: index 2 is the second part's first image
    assert [mix.locate(i)[1] for i in range(5)] == [0, 1, 0, 1, 2]
    assert [mix.locate(i)[0] is parts[1] for i in range(5)] == [False, False, True, True, True]


def test_npz_source_gives_every_stored_image_back(tmp_path):
    """Each record is its own JPEG bytes (only index 0 was read back before), and the stored
    paths name them."""
    srcs = {"content": data.SyntheticSource("content", 3), "style": data.SyntheticSource("style", 4)}
    out = tmp_path / "subset.npz"
    data.export_arrays({}, out, n_content=3, n_style=4, size=300, sources=srcs)
    with np.load(out, allow_pickle=False) as z:
        buf, off = z["style_jpeg"], z["style_offsets"]
    style = data.NpzSource(out, "style")
    assert len(style) == 4
    for i in range(4):
        raw = style.raw_bytes(i)
        assert raw == buf[off[i]:off[i + 1]].tobytes() and raw[:2] == b"\xff\xd8"
        assert np.array_equal(style.get(i), np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")))
    assert len({style.raw_bytes(i) for i in range(4)}) == 4
    # all four images, in the first epoch's order, named by their source
    assert sorted(style.path(i) for i in range(4)) == [f"synthetic-style[{k}]" for k in range(4)]


def test_npz_source_refuses_malformed_paths_and_offsets_in_one_line(tmp_path):
    """Paths and offsets are checked when the file is opened: a 0-d ``content_paths`` gave a
    TypeError traceback, a short one an IndexError in a loader thread (naming an image that
    would not decode), and bad offsets (decreasing, float, all zero, not ending at the buffer's
    end) read as 'cannot decode stored image' deep in training."""
    srcs = {"content": data.SyntheticSource("content", 3), "style": data.SyntheticSource("style", 2)}
    good = tmp_path / "good.npz"
    data.export_arrays({}, good, n_content=3, n_style=2, size=64, sources=srcs)
    valid = dict(np.load(good, allow_pickle=False))
    off, end = valid["content_offsets"], len(valid["content_jpeg"])
    cases = {
        "paths0d": ({"content_paths": np.array("x")}, "content_paths"),
        "pathsshort": ({"content_paths": valid["content_paths"][:1]}, "content_paths"),
        "paths2d": ({"content_paths": valid["content_paths"].reshape(1, -1)}, "content_paths"),
        "decreasing": ({"content_offsets": off[::-1].copy()}, "content_offsets"),
        "float": ({"content_offsets": np.array([0, np.nan, 1e30, end])}, "content_offsets"),
        "zeros": ({"content_offsets": np.zeros_like(off)}, "content_offsets"),
        "shortend": ({"content_offsets": np.append(off[:-1], end - 1)}, "content_offsets"),
    }
    for name, (change, what) in cases.items():
        bad = tmp_path / f"{name}.npz"
        np.savez(bad, **{**valid, **change})
        with pytest.raises(ConfigError) as e:
            data.NpzSource(bad, "content")
        msg = str(e.value)
        assert "\n" not in msg and str(bad) in msg and f"malformed {what}" in msg, (name, msg)
        assert "export it again" in msg
        data.NpzSource(bad, "style")  # the other role is intact
    assert len(data.NpzSource(good, "content")) == 3


def test_ordered_map_looks_ahead_a_bounded_number_of_items():
    """Preparation decodes at most 4 x workers files ahead of the one it yields (a folder of
    100000 scans must not be decoded into memory at once), in input order."""
    consumed = []

    def items():
        for i in range(100):
            consumed.append(i)
            yield (f"/f{i}", f"k{i}", 0, 0)

    gen = data._ordered_map(lambda it: it[1].upper(), items(), workers=2)
    assert next(gen) == ("k0", "K0")
    assert len(consumed) <= 4 * 2 + 1
    assert list(gen) == [(f"k{i}", f"K{i}") for i in range(1, 100)]
    assert list(data._ordered_map(lambda it: it[0], [("a", "x", 0, 0)], workers=1)) == [("x", "a")]


def test_scan_skips_hidden_folders_and_names_same_named_folders_apart(tmp_path):
    roots = [tmp_path / p / "photos" for p in ("a", "b", "c")]
    for r in roots:
        (r / ".thumbs").mkdir(parents=True)
        (r / "sub").mkdir()
        for rel in ("x.png", "sub/y.jpg", ".thumbs/t.png", ".z.png"):
            (r / rel).write_bytes(b"not decoded by the scan")
    files, ignored = data._scan_dirs([str(r) for r in roots])
    assert ignored == 0
    assert [key for _, key, _, _ in files] == [
        f"{p}/{rel}" for p in ("photos", "photos_2", "photos_3") for rel in ("sub/y.jpg", "x.png")]
    assert files[0][0] == os.path.join(str(roots[0]), "sub", "y.jpg")
    assert files[0][2] == len(b"not decoded by the scan")


def test_fingerprint_sees_storage_settings_and_contents(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(_smooth(80, 90, 3)).save(d / "photo.png")

    def name(**kw):
        return data.folder_builder([d], data_dir=tmp_path / "tfds", **kw).builder_config.name

    first = name()
    assert name() == first and name(workers=7) == first  # threads do not change the records
    others = [name(jpeg_quality=80), name(max_source_side=256), name(min_source_side=32),
              name(max_pixels=1000)]
    assert len({first, *others}) == 5
    Image.fromarray(_smooth(80, 90, 4)).save(d / "photo.png")  # other pixels
    assert name() != first


def test_stored_size_caps_by_hand():
    """Smaller side <= max_side, longer side <= 3 x max_side, the smaller side not cut below
    min_side (numbers worked out by hand for max 512, min 64)."""
    cap = data._stored_cap
    assert cap(1536, 100, 512, 64) is None  # 3 x 512 exactly: stored as is
    assert cap(1537, 100, 512, 64) == 1536
    assert cap(2000, 100, 512, 64) == 1536  # floor(2000 x 1536/2000); short side 76.8 >= 64
    assert cap(5000, 200, 512, 64) == 1600  # 1536 would leave a short side of 61.4 < 64
    assert cap(700, 520, 512, 64) == 689  # floor(700 x 512/520)
    assert cap(512, 512, 512, 64) is None and cap(513, 513, 512, 64) == 512


def test_too_elongated_is_past_twelve_max_sides():
    assert data._too_elongated(6144, 64, None, 512, 64) is None  # exactly 12 x 512: kept
    assert data._too_elongated(6145, 64, None, 512, 64) == (
        "too elongated (6145 x 64: at a short side of 64 px or more the long side is 6145 > "
        "6144 px)")
    assert data._too_elongated(6145, 63, None, 512, 64) is None  # too small: said as such
    assert data._too_elongated(20000, 1000, 9000, 512, 64).endswith("9000 > 6144 px)")
    assert data._too_elongated(70000, 6000, None, 8000, 64).endswith("70000 > 65500 px)")


def test_only_plain_srgb_jpegs_are_stored_byte_for_byte(tmp_path):
    """A small RGB JPEG is stored as is; one with an EXIF rotation is stored upright (its
    bytes as is would be decoded sideways), one with an ICC profile re-encoded (converted)."""
    from PIL import ImageCms

    def prep(p):
        out = data._prepare_one((str(p), "k", 0, 0), max_side=512, min_side=64, quality=90)
        assert isinstance(out, bytes), out
        return out

    pix = _smooth(80, 120, 3)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(pix).save(plain, quality=90)
    assert prep(plain) == plain.read_bytes()
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pix).save(rotated, quality=90, exif=exif.tobytes())
    stored = Image.open(io.BytesIO(prep(rotated)))
    assert stored.size == (80, 120)  # upright: portrait
    icc = tmp_path / "icc.jpg"
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(pix).save(icc, quality=90, icc_profile=profile)
    assert prep(icc) != icc.read_bytes()
    assert not Image.open(io.BytesIO(prep(icc))).info.get("icc_profile")


def test_reencoded_images_keep_full_chroma_at_quality_90_and_above(tmp_path):
    from PIL import JpegImagePlugin

    src = tmp_path / "p.png"
    Image.fromarray(_smooth(80, 120, 4)).save(src)
    for quality, sampling in ((90, 0), (95, 0), (89, 2)):  # 0 = 4:4:4, 2 = 4:2:0
        out = data._prepare_one((str(src), "k", 0, 0), max_side=512, min_side=64,
                                quality=quality)
        assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(out))) == sampling, quality


def test_catalog_specs_parse_to_name_and_split():
    assert data._parse_catalog("tfds:dtd") == ("dtd", "train")
    assert data._parse_catalog("tfds:dtd#") == ("dtd", "train")  # an empty split is train
    assert data._parse_catalog("tfds:coco/2017#validation") == ("coco/2017", "validation")
    assert data._parse_catalog("tfds:a#b#c") == ("a", "b#c")
    for bad in ("tfds:", "tfds:#test"):
        with pytest.raises(ConfigError, match="expected tfds:<name>"):
            data._parse_catalog(bad)


def test_a_catalog_source_mixes_in_content_folders_with_their_weights(tmp_path, monkeypatch):
    catalog = data.SyntheticSource("content", 3)
    made = {}

    def fake_folder(dirs, **kw):
        made[dirs[0]] = data.SyntheticSource("style", 2 + len(made))
        return made[dirs[0]]

    monkeypatch.setattr(data, "source_from_catalog", lambda name, split, data_dir: catalog)
    monkeypatch.setattr(data, "prepare_folder", fake_folder)
    photos, paintings = tmp_path / "photos", tmp_path / "paintings"
    photos.mkdir()
    paintings.mkdir()
    srcs = data.prepare({"source": "tfds:fake", "content_dirs": [str(photos)],
                         "content_dir_weights": [1.0, 3.0], "style_dirs": [str(paintings)],
                         "data_dir": str(tmp_path / "tfds")})
    content = srcs["content"]
    assert isinstance(content, data.MixtureSource) and content.weights == [1.0, 3.0]
    assert content.parts == [catalog, made[str(photos)]]
    assert srcs["style"] is made[str(paintings)]


def test_a_catalog_dataset_prepared_earlier_is_not_counted_as_prepared_now(tmp_path, capsys,
                                                                           monkeypatch):
    """data prepare's total said a catalog dataset found on disk (tfds:coco/2017, prepared
    once) was "prepared now": its report had no "reused"."""
    tfds = data._tfds()
    photos, paintings = tmp_path / "photos", tmp_path / "paintings"
    for i, d in enumerate((photos, paintings)):
        d.mkdir()
        Image.fromarray(_smooth(96, 128, i)).save(d / "a.png")
    root = tmp_path / "tfds"
    data.prepare_folder([photos], data_dir=root)  # (a catalog dataset's stand-in, on disk)
    monkeypatch.setattr(tfds, "builder", lambda name, **kw: data.folder_builder(
        [photos], data_dir=root))
    assert data.main(["prepare", "--source", "tfds:fake", "--style-dir", str(paintings),
                      "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "total: 2 images (1 prepared now, 1 prepared earlier)" in out, out


def test_dir_weights_of_the_wrong_kind_are_one_line_before_any_preparation(tmp_path):
    """``--set data.style_dir_weights=2`` (one folder, one weight) was a TypeError traceback,
    and a mistyped list (``[1 2]``, kept as a string) "style: 5 weights for 1 sources"; a
    wrong count was found only after the content folders were prepared (minutes)."""
    photos, paintings = tmp_path / "photos", tmp_path / "paintings"
    for i, d in enumerate((photos, paintings)):
        d.mkdir()
        Image.fromarray(_smooth(96, 128, i)).save(d / "a.png")
    cfg = {"content_dirs": [str(photos)], "style_dirs": [str(paintings)],
           "data_dir": str(tmp_path / "tfds")}
    for bad in (2, "[1 2]", "abc", [[1.0]], ["x"]):
        with pytest.raises(ConfigError) as e:
            data.prepare({**cfg, "style_dir_weights": bad})
        assert str(e.value) == (f"data config: style_dir_weights must be a list of numbers, one "
                                f"per entry of style_dirs, got {bad!r}"), e.value
    with pytest.raises(ConfigError, match=r"^data config: 2 style_dir_weights for 1 style_dirs$"):
        data.prepare({**cfg, "style_dir_weights": [1, 2]})
    assert not (tmp_path / "tfds").exists()  # (nothing was prepared first)
    # (a folder named by a number, and a count of None, were TypeError tracebacks)
    with pytest.raises(ConfigError, match=r"^data config: style_dirs: 2024 is not a folder name"):
        data.prepare({**cfg, "style_dirs": [2024]})
    with pytest.raises(ConfigError, match=r"^data config: synthetic_count must be an integer"):
        data.prepare({**cfg, "source": "synthetic", "synthetic_count": None})
    srcs = data.prepare({**cfg, "style_dir_weights": (3,), "content_dir_weights": np.ones(1)})
    assert srcs["style"].weights == [3.0] and srcs["content"].weights == [1.0]


def test_epoch_order_is_the_documented_formula():
    """Unweighted: epoch e is ``default_rng([seed, e, stream]).permutation(L)``; weighted: part
    k's slots come from ``default_rng([seed, e, stream, 1 + k])`` permutations (repeated), then
    are shuffled with the epoch's rng. Written out here independently."""
    seed, stream = 11, 1
    s = data.EpochSampler([3, 4], None, seed, stream)
    for e in range(3):
        want = np.random.default_rng([seed, e, stream]).permutation(7)
        assert np.array_equal(s.epoch(e), want)
        assert [s.index(7 * e + r) for r in range(7)] == list(want)
    sizes, weights = [2, 5], [3.0, 1.0]  # L = 7: 5.25 -> 5 slots, 1.75 -> 2 slots
    w = data.EpochSampler(sizes, weights, seed, stream)
    for e in range(2):
        rng = np.random.default_rng([seed, e, stream])
        r1 = np.random.default_rng([seed, e, stream, 1])
        first = np.concatenate([r1.permutation(2) for _ in range(3)])[:5]
        second = np.random.default_rng([seed, e, stream, 2]).permutation(5)[:2] + 2
        want = np.concatenate([first, second])
        rng.shuffle(want)
        assert np.array_equal(w.epoch(e), want)


def _cfg3(**kw):
    c = {"source": "synthetic", "synthetic_count": 5, "image_size": 32, "style_size": 32,
         "style_resize_range": (40, 60), "content_scale_range": (1.5, 2.0)}
    c.update(kw)
    return c


def test_loader_examples_are_the_documented_draws():
    """Example i of batch ``step``: image ``sampler.index(step * B + i)`` augmented with
    ``default_rng([seed, step, i, stream])`` and the config's ranges."""
    srcs = data.prepare(_cfg3())
    loader = data.make_loader(_cfg3(), batch_size=3, seed=4, num_workers=0, sources=srcs)
    b = loader.batch(2)
    loader.close()
    for i in range(3):
        p = 2 * 3 + i
        ci = np.random.default_rng([4, p // 5, 0]).permutation(5)[p % 5]
        si = np.random.default_rng([4, p // 5, 1]).permutation(5)[p % 5]
        c = data.augment_content(srcs["content"].get(ci), np.random.default_rng([4, 2, i, 0]), 32,
                                 (1.5, 2.0), as_uint8=True)
        s, jit = data.augment_style(srcs["style"].get(si), np.random.default_rng([4, 2, i, 1]),
                                    32, (40, 60), 1.0, defer_jitter=True)
        assert np.array_equal(b["content"][i], c) and np.array_equal(b["style"][i], s)
        assert np.array_equal(b["style_jitter"][i], jit)


def test_loader_threads_and_prefetch_come_from_the_config(monkeypatch):
    srcs = data.prepare(_cfg3())

    def made(cfg, **kw):
        loader = data.make_loader(cfg, batch_size=1, seed=0, sources=srcs, **kw)
        loader.close()
        return loader.num_workers, loader.prefetch

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert made(_cfg3()) == (8, 4)  # min(8, cpus), the default prefetch
    assert made(_cfg3(num_workers=0, prefetch=2)) == (0, 2)
    assert made(_cfg3(num_workers=3), num_workers=1, prefetch=6) == (1, 6)  # arguments first
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert made(_cfg3()) == (3, 4)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert made(_cfg3()) == (1, 4)


def test_device_batches_without_jitter_have_no_jitter_field():
    srcs = data.prepare(_cfg3())
    for strength, keys in ((0.0, {"content", "style"}),
                           (0.5, {"content", "style", "style_jitter"})):
        with data.make_loader(_cfg3(augment_strength=strength), batch_size=2, seed=0,
                              num_workers=1, sources=srcs) as loader:
            b = next(loader)
            st = loader.stats()
        assert set(b) == keys
        assert st["ms_per_image_per_worker"] == pytest.approx(
            1e3 * st["worker_busy_s"] / st["images"])


def test_sixteen_bit_images_scale_to_eight_bits():
    a = (np.arange(256, dtype=np.uint32) * 257).reshape(16, 16)  # 0, 257, ..., 65535
    for dtype, mode in ((np.uint16, "I;16"), (np.int32, "I")):
        im = Image.fromarray(a.astype(dtype))
        assert im.mode == mode
        got = np.asarray(data._to_rgb(im))
        assert got.shape == (16, 16, 3)
        assert np.array_equal(got[..., 0].ravel(), np.arange(256)) and (got[..., 2] == got[..., 0]).all()


class _JpegSource(data.DataSource):
    """Stored JPEGs (as a prepared folder holds them), for the export's copy-or-re-encode."""

    def __init__(self, arrays, name="jpegs"):
        self.name = name
        self.blobs = []
        for a in arrays:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="JPEG", quality=95)
            self.blobs.append(buf.getvalue())

    def __len__(self):
        return len(self.blobs)

    def open(self, index):
        return Image.open(io.BytesIO(self.blobs[self._check(index)]))

    def raw_bytes(self, index):
        return self.blobs[self._check(index)]


def test_export_copies_small_jpegs_and_centre_crops_long_ones(tmp_path):
    size = 64
    small, long = _smooth(60, 120, 1), _smooth(60, 180, 2)  # long side 120 <= 128 < 180
    src = _JpegSource([small, long])
    srcs = {"content": src, "style": src}
    out = tmp_path / "e.npz"
    data.export_arrays({}, out, 2, 2, size, sources=srcs, seed=0)
    got = data.NpzSource(out, "content")
    by_shape = {got.get(i).shape: i for i in range(2)}
    assert set(by_shape) == {(60, 120, 3), (60, 128, 3)}
    assert got.raw_bytes(by_shape[(60, 120, 3)]) == src.blobs[0]  # copied as stored
    cropped = got.get(by_shape[(60, 128, 3)]).astype(np.float64)
    ref = np.asarray(src.open(1).convert("RGB"), np.float64)
    assert np.abs(cropped - ref[:, 26:154]).mean() < 3  # the centre: (180 - 128) / 2 = 26
    assert np.abs(cropped - ref[:, :128]).mean() > 3 * np.abs(cropped - ref[:, 26:154]).mean()


def test_export_follows_the_seeded_weighted_first_epoch_and_its_size_limit(tmp_path):
    parts = [data.SyntheticSource("style", 4), data.SyntheticSource("content", 3)]
    mix = data.MixtureSource(parts, [0.0, 1.0], name="style")
    srcs = {"content": data.SyntheticSource("content", 6), "style": mix}
    for seed in (0, 1):
        out = tmp_path / f"s{seed}.npz"
        summary = data.export_arrays({}, out, 6, 7, 96, sources=srcs, seed=seed)
        # (seven draws of the three images of the only weighted part: said as such)
        assert (summary["n_style"], summary["n_style_distinct"]) == (7, 3)
        assert (summary["n_content"], summary["n_content_distinct"]) == (6, 6)
        content = data.NpzSource(out, "content")
        want = np.random.default_rng([seed, 0, 0]).permutation(6)
        assert [content.path(i) for i in range(6)] == [f"synthetic-content[{k}]" for k in want]
        style = data.NpzSource(out, "style")
        assert len(style) == 7 and all(style.path(i).startswith("synthetic-content[")
                                       for i in range(7))  # weight 0 on the first part
    mb = (tmp_path / "s0.npz").stat().st_size / 1e6
    with pytest.raises(ConfigError, match="MB"):
        data.export_arrays({}, tmp_path / "big.npz", 6, 7, 96, sources=srcs, max_mb=mb * 0.99)
    data.export_arrays({}, tmp_path / "ok.npz", 6, 7, 96, sources=srcs, max_mb=mb * 1.01)


# ------------------------------------------------------------------------------------------------
# Mutation-testing gaps: TFDS record paths, a folder that changes while it is prepared


def test_tfds_source_paths_are_text_whatever_type_the_record_holds():
    """A record's path comes back as text: bytes (TFDS' Text feature) decoded as UTF-8, a str
    as it is; no path key, or a record without one, gives ``name[index]``."""
    records = [{"image": b"", "path": "photos/café ü.jpg".encode("utf-8")},
               {"image": b"", "path": "styles/x.png"},
               {"image": b""}]
    src = data.TFDSSource(records, "mine")
    assert [src.path(i) for i in range(3)] == ["photos/café ü.jpg", "styles/x.png", "mine[2]"]
    assert all(type(src.path(i)) is str for i in range(3))
    assert data.TFDSSource(records, "mine", path_key=None).path(0) == "mine[0]"


def test_a_folder_that_changes_during_preparation_is_refused_and_prepared_afresh(tmp_path,
                                                                                 monkeypatch):
    """The folder is scanned (its fingerprint names the dataset) before preparation and again
    when TFDS generates it: a file added in between is one error saying to run it again, and
    nothing is stored under the old fingerprint's name (which the new file is not part of);
    the next run prepares the folder as it now is."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(_smooth(96, 128, i)).save(photos / f"p{i}.png")
    real = data.folder_builder
    built = []

    def then_add_a_file(*a, **k):
        b = real(*a, **k)
        built.append(b)
        Image.fromarray(_smooth(96, 128, 9)).save(photos / "late.png")
        return b

    monkeypatch.setattr(data, "folder_builder", then_add_a_file)
    with pytest.raises(ConfigError, match="the folder changed during preparation; run it again"):
        data.prepare_folder([photos], data_dir=tmp_path / "tfds", workers=1)
    old = built[0]
    assert not (Path(old.data_dir) / "dataset_info.json").exists()
    monkeypatch.setattr(data, "folder_builder", real)
    again = data.prepare_folder([photos], data_dir=tmp_path / "tfds", workers=1)
    assert again.report["name"] != old.builder_config.name and not again.report["reused"]
    assert sorted(again.path(i) for i in range(len(again))) == [
        "photos/late.png", "photos/p0.png", "photos/p1.png"]


def test_a_file_that_vanishes_during_preparation_is_not_stored_as_skipped(tmp_path,
                                                                          monkeypatch):
    """A file listed (and hashed) that vanished before it was decoded (a sync tool, a network
    disk) was stored as skipped ("no such file") under the folder's name as listed, and left out
    of every later run on the folder, also once it was back. Nothing is kept; the next run
    prepares it. A file that was already unreadable when listed stays a skip (reused)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(_smooth(96, 128, i)).save(photos / f"p{i}.png")
    (photos / "empty.jpg").write_bytes(b"")  # (skipped at listing already: a real skip)
    kept = (photos / "p1.png").read_bytes()
    real = data._prepare_one

    def p1_vanishes(item, **kw):
        if item[0].endswith("p1.png"):
            os.unlink(item[0])
        return real(item, **kw)

    monkeypatch.setattr(data, "_prepare_one", p1_vanishes)
    with pytest.raises(ConfigError) as e:
        data.prepare_folder([photos], data_dir=tmp_path / "tfds", workers=1)
    assert str(e.value) == (f"{photos}: 1 file changed or vanished during preparation (e.g. "
                            f"{photos / 'p1.png'}: no such file); nothing was kept: run it again")
    monkeypatch.setattr(data, "_prepare_one", real)
    (photos / "p1.png").write_bytes(kept)  # (back, as it was when listed)
    again = data.prepare_folder([photos], data_dir=tmp_path / "tfds", workers=1)
    assert not again.report["reused"] and again.report["num_prepared"] == 3
    assert [s["file"] for s in again.report["skipped"]] == [str(photos / "empty.jpg")]
    assert data.prepare_folder([photos], data_dir=tmp_path / "tfds", workers=1).report["reused"]


def test_damaged_prepared_data_is_one_line_naming_the_folder(folder, tmp_path, capsys):
    """A preparation copied in part or cut short was reused as it was ("reused True") and
    found by the loader in the middle of training: an array_record RuntimeError traceback.
    Now a reuse checks the shard files against dataset_info.json, and a read that fails
    later is a ConfigError naming the folder to delete."""
    import shutil

    d = tmp_path / "tfds"
    src = data.prepare_folder([str(folder)], data_dir=str(d), progress=False)
    version_dir = Path(src.report["data_dir"])
    shard = next(version_dir.glob("*-train.array_record-00000-of-00001"))
    saved = tmp_path / "shard.bak"
    shutil.copy(shard, saved)
    shard.unlink()
    with pytest.raises(ConfigError) as e:
        data.prepare_folder([str(folder)], data_dir=str(d), progress=False)
    assert str(e.value) == (f"{version_dir}: the prepared data is damaged or incomplete "
                            f"({shard.name} is missing); delete this folder to prepare it again")
    n = src.report["num_prepared"]
    for cut in (len(saved.read_bytes()) // 2, 100):
        shard.write_bytes(saved.read_bytes()[:cut])
        with pytest.raises(ConfigError) as e:
            data.prepare_folder([str(folder)], data_dir=str(d), progress=False)
        assert re.fullmatch(rf".*: the prepared data is damaged or incomplete \({shard.name} "
                            rf"(holds \d+ of its {n} records|cannot be read)\); delete this "
                            "folder to prepare it again", str(e.value)), str(e.value)
    # a read that fails after the reuse check (the array_record error, as it comes)
    class Damaged:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise RuntimeError("Corrupted Riegeli/records file: chunk header hash mismatch")

    bad = data.TFDSSource(Damaged(), name="x", report={"data_dir": str(version_dir)})
    with pytest.raises(ConfigError) as e:
        bad.open(1)
    assert str(e.value) == (f"{version_dir}: cannot read the prepared data (Corrupted Riegeli/"
                            "records file: chunk header hash mismatch); delete this folder to "
                            "prepare it again")
    shard.write_bytes(saved.read_bytes())  # (restored: reused again)
    (version_dir / "dataset_info.json").unlink()
    shutil.rmtree(version_dir)
    assert data.prepare_folder([str(folder)], data_dir=str(d), progress=False).report[
        "num_prepared"] == src.report["num_prepared"]


def test_compressible_images_are_reused_not_called_damaged(tmp_path):
    """array_record compresses what TFDS records as numBytes: flat line art made files smaller
    than "recorded", and a byte check refused every reuse as "cut short" (a review found it)."""
    d = tmp_path / "lineart"
    d.mkdir()
    for i in range(40):  # (a flat JPEG repeats one entropy-coded block: zstd shrinks it)
        a = np.full((500, 700, 3), 255, np.uint8)
        a[10 * i:10 * i + 3] = 0
        Image.fromarray(a).save(d / f"{i}.jpg", quality=95)
    first = data.prepare_folder([str(d)], data_dir=str(tmp_path / "t"), progress=False)
    version_dir = Path(first.report["data_dir"])
    info = json.loads((version_dir / "dataset_info.json").read_text())
    on_disk = sum(f.stat().st_size for f in version_dir.glob("*.array_record-*"))
    assert on_disk < int(info["splits"][0]["numBytes"])  # (the case: smaller than recorded)
    again = data.prepare_folder([str(d)], data_dir=str(tmp_path / "t"), progress=False)
    assert again.report["reused"] and len(again) == len(first) == 40


def test_overlapping_folders_are_refused_before_anything_is_prepared(tmp_path):
    """The same folder twice in a role (also spelled with a trailing slash or through a link),
    or one folder inside another, was prepared as given: its images counted twice in the
    mixture, or paintings inside the photo folder trained on as content, without a word. (One
    folder as both roles is allowed: other tests use it.)"""
    root = tmp_path / "proj"
    (root / "paintings" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    os.symlink(root / "paintings", tmp_path / "link")
    p, c = str(root / "paintings"), str(root)
    cases = [
        ({"content_dirs": [str(tmp_path / "other")], "style_dirs": [p, p + "/"]},
         f"{p}/: listed twice in style_dirs (as {p!r} and {p + '/'!r}); list a folder once (to "
         "give it more weight: style_dir_weights, --style-weight of "
         "`python -m arbitrary_nst.data`)"),
        ({"content_dirs": [str(tmp_path / "other")], "style_dirs": [p, str(tmp_path / "link")]},
         f"{tmp_path / 'link'}: listed twice in style_dirs"),
        ({"content_dirs": [c], "style_dirs": [p]},
         f"{p}: inside {c}, which is also listed and searched with its subfolders: its images "
         "would be taken twice, as content photos and as paintings; list folders that do not "
         "overlap"),
        ({"content_dirs": [str(tmp_path / "other")], "style_dirs": [p + "/sub", p]},
         f"{p}/sub: inside {p}, which is also listed and searched with its subfolders: its "
         "images would be taken twice; list folders that do not overlap"),
    ]
    # a link inside one listed folder to another (or into it, or to a file in it): the walk
    # follows links, so those images were taken twice (paint's 3 of a 7-image total)
    more = tmp_path / "more"
    (more / "z").mkdir(parents=True)
    os.symlink(root / "paintings", more / "paint_link")
    os.symlink(root / "paintings" / "sub", more / "z" / "sub_link")
    cases += [
        ({"content_dirs": [str(tmp_path / "other")], "style_dirs": [p, str(more)]},
         f"{more / 'paint_link'}: links into {p}, which is also listed: its images would be "
         "taken twice; remove the link or list folders that do not overlap"),
        ({"content_dirs": [str(more / "z")], "style_dirs": [p + "/sub"]},
         f"{more / 'z' / 'sub_link'}: links into {p}/sub, which is also listed: its images "
         "would be taken twice, as content photos and as paintings; remove the link"),
    ]
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "x.png").write_bytes(b"x")
    os.symlink(tmp_path / "files" / "x.png", root / "paintings" / "sub" / "x.png")
    cases.append(({"content_dirs": [str(tmp_path / "files")], "style_dirs": [p + "/sub"]},
                  f"{p}/sub/x.png: links into {tmp_path / 'files'}, which is also listed"))
    for cfg, want in cases:
        with pytest.raises(ConfigError) as e:
            data.prepare({**cfg, "data_dir": str(tmp_path / "t")})
        assert str(e.value).startswith(want), (str(e.value), want)
    # links that stay inside their folder, or leave to a folder not listed, are fine
    os.symlink(root / "paintings" / "sub", root / "paintings" / "again")
    (tmp_path / "fine").mkdir()
    os.symlink(tmp_path / "other", tmp_path / "fine" / "elsewhere")
    data._check_folders_distinct({"content_dirs": [str(tmp_path / "fine")], "style_dirs": [p]})
    # with a catalog source too, before its content folders are prepared; and ~ expanded
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    Image.fromarray(_smooth(64, 64, 1)).save(home / "photos" / "a.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        with pytest.raises(ConfigError, match="listed twice in content_dirs"):
            data.prepare({"source": "tfds:no_such_dataset_xyz", "style_dirs": [p],
                          "content_dirs": ["~/photos", str(home / "photos")],
                          "data_dir": str(tmp_path / "t")})
    assert not (tmp_path / "t").exists()


def test_preparation_log_counts_files_it_ignored(tmp_path, caplog):
    """``data prepare`` said "N other files ignored"; train.py (which prepares through the same
    builder and shows its log) did not: phone photos saved as .heic were left out silently.
    A .heic photo (unreadable without pillow-heif) is now a skipped image, with its reason;
    other files are still counted as ignored, the accepted extensions named in short."""
    import logging

    d = tmp_path / "p"
    d.mkdir()
    for i in range(2):
        Image.fromarray(_smooth(64, 64, i)).save(d / f"{i}.jpg")
    (d / "phone.heic").write_bytes(b"x")
    (d / "notes.txt").write_text("x")
    (d / "run.json").write_text("{}")
    heic = ".heic" not in images.IMAGE_EXTENSIONS  # (pillow-heif not installed: unreadable)
    with caplog.at_level(logging.INFO, logger="arbitrary_nst.data"):
        report = data.prepare_folder([str(d)], data_dir=str(tmp_path / "t"),
                                     progress=False).report
    lines = [r.getMessage() for r in caplog.records if "images prepared" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(
        f": 2 images prepared, {int(heic)} skipped, 2 other files ignored (not "
        + images.describe_image_extensions("/") + ")"), lines
    assert "jpg/jpeg/png/" in lines[0] and len(lines[0]) < 250
    if heic:
        assert report["skipped"] == [{"path": "p/phone.heic", "file": str(d / "phone.heic"),
                                      "reason": "HEIC is not readable here (pip install "
                                      "pillow-heif)"}]


# ------------------------------------------------------------------------------------------------
# Mutation-testing pass 3: the content-digest naming of prepared datasets


def _cached_paths(root: Path) -> set[str]:
    f = root / "file_digests.json"
    return set(json.loads(f.read_text())["files"]) if f.exists() else set()


def test_a_file_with_an_old_mtime_but_a_new_ctime_is_not_cached(tmp_path, monkeypatch):
    """The racy rule looks at the ctime too: a file rewritten just now with its old mtime put
    back (``cp -p``, ``exiftool -P``) on a coarse-timestamp file system can be rewritten again
    within the same ctime tick; caching it would serve the first rewrite's digest."""
    monkeypatch.setattr(data, "DIGEST_FALLBACK", str(tmp_path / "user" / "digests.json"))
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "a.bmp")
    st = os.stat(d / "a.bmp")
    os.utime(d / "a.bmp", ns=(st.st_atime_ns, st.st_mtime_ns - 60 * 10**9))  # mtime: 1 min ago
    root = tmp_path / "tfds"
    data._scan_dirs([str(d)], digest_cache=data._DigestCache(root))
    assert os.path.realpath(d / "a.bmp") not in _cached_paths(root)
    monkeypatch.setattr(data._DigestCache, "RACY_S", 0.0)  # (the same file, no longer recent)
    data._scan_dirs([str(d)], digest_cache=data._DigestCache(root))
    assert os.path.realpath(d / "a.bmp") in _cached_paths(root)


def test_scanning_one_folder_keeps_the_cached_digests_of_others(tmp_path, monkeypatch):
    """Dropping the entries of files that are gone is limited to the folders scanned: scanning
    ``photos`` must neither drop the digests of ``paintings`` nor those of a sibling whose
    name merely starts the same (``photos2``); each was read again in full on its next use."""
    monkeypatch.setattr(data._DigestCache, "RACY_S", 0.0)
    monkeypatch.setattr(data, "DIGEST_FALLBACK", str(tmp_path / "user" / "digests.json"))
    dirs = [tmp_path / n for n in ("photos", "photos2", "paintings")]
    for i, d in enumerate(dirs):
        d.mkdir()
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / "x.bmp")
    root = tmp_path / "tfds"
    data._scan_dirs([str(d) for d in dirs], digest_cache=data._DigestCache(root))
    everything = {os.path.realpath(d / "x.bmp") for d in dirs}
    assert _cached_paths(root) == everything
    (dirs[0] / "y.bmp").write_bytes((dirs[0] / "x.bmp").read_bytes())  # (something to save)
    (dirs[0] / "x.bmp").unlink()  # gone: its entry is dropped, the others' are kept
    data._scan_dirs([str(dirs[0])], digest_cache=data._DigestCache(root))
    assert _cached_paths(root) == (everything - {os.path.realpath(dirs[0] / "x.bmp")}) | {
        os.path.realpath(dirs[0] / "y.bmp")}


def test_file_digests_cover_every_byte(tmp_path):
    """Two large images with the same size and the same first megabytes (a picture edited at
    the bottom, a camera's fixed-size RAW-like JPEGs) are different datasets: a digest of the
    first chunk only reused the other folder's preparation."""
    head = bytes(range(256)) * (6 * 2**10)  # 1.5 MiB: past the first 1 MiB read
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(head + b"\x00")
    b.write_bytes(head + b"\x01")
    assert data._file_digest(str(a)) != data._file_digest(str(b))
    import hashlib

    assert data._file_digest(str(a)) == hashlib.blake2b(a.read_bytes(), digest_size=16).hexdigest()


def test_camera_raws_and_heic_are_not_read_for_digests(tmp_path, monkeypatch):
    """Files that are images but not read here (camera raws, HEIC without pillow-heif) are
    listed (preparation reports them as skipped) but not read in full for a digest: tens of
    MB each, for files that are never decoded."""
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(_smooth(64, 64, 1)).save(d / "a.jpg")
    (d / "b.nef").write_bytes(os.urandom(1024))
    read = []
    real = data._file_digest
    monkeypatch.setattr(data, "_file_digest", lambda p, *a, **k: read.append(p) or real(p, *a, **k))
    files, ignored = data._scan_dirs([str(d)])
    assert [Path(f[0]).name for f in files] == ["a.jpg", "b.nef"] and ignored == 0
    assert [Path(p).name for p in read] == ["a.jpg"]


def test_dataset_fingerprints_are_stable_and_see_file_names(tmp_path):
    """A folder prepared earlier keeps its dataset name (the fingerprint of unchanged files with
    the default settings is pinned: a change of formula prepares every user's folders again,
    and a resumed training says its images differ); a renamed file is another dataset (its
    records carry the old path, and the skip list names files that are not there)."""
    import types

    cfg = types.SimpleNamespace(max_source_side=512, min_source_side=64, jpeg_quality=90,
                                max_pixels=data.DEFAULT_MAX_PIXELS_FIELD)
    files = [("/x/a.png", "photos/a.png", 10, "0" * 32), ("/x/b.png", "photos/b.png", 20, "1" * 32)]
    assert data._fingerprint(files, cfg) == "ff8422d7034a"
    moved = [("/elsewhere/a.png", "photos/a.png", 10, "0" * 32),
             ("/elsewhere/b.png", "photos/b.png", 20, "1" * 32)]
    assert data._fingerprint(moved, cfg) == "ff8422d7034a"  # (places are not part of it)
    renamed = [files[0], ("/x/c.png", "photos/c.png", 20, "1" * 32)]
    assert data._fingerprint(renamed, cfg) != "ff8422d7034a"
    other_limit = types.SimpleNamespace(**{**vars(cfg), "max_pixels": 1000})
    assert data._fingerprint(files, other_limit) != "ff8422d7034a"


def test_a_file_that_could_not_be_read_is_read_again_next_time(tmp_path, monkeypatch):
    """A read error (a flaky disk, a network share that dropped out) is not cached: cached, the
    file stayed "unreadable" (skipped from every later preparation, in another dataset) until
    something changed its size or times."""
    monkeypatch.setattr(data._DigestCache, "RACY_S", 0.0)
    monkeypatch.setattr(data, "DIGEST_FALLBACK", str(tmp_path / "user" / "digests.json"))
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "a.bmp")
    real = data._file_digest
    monkeypatch.setattr(data, "_file_digest", lambda p: "unreadable: Input/output error")
    root = tmp_path / "tfds"
    files, _ = data._scan_dirs([str(d)], digest_cache=data._DigestCache(root))
    assert files[0][3] == "unreadable: Input/output error"
    monkeypatch.setattr(data, "_file_digest", real)  # the share is back
    files, _ = data._scan_dirs([str(d)], digest_cache=data._DigestCache(root))
    assert files[0][3] == real(str(d / "a.bmp"))


def test_the_digest_bar_shows_only_for_long_reads(tmp_path, monkeypatch):
    """The "read files for their digests" bar appears for more than 256 MiB or more than 5000
    files to read (a first scan of a big folder: minutes), and never for a re-scan that reads
    a few files (it flashed on every start), nor without ``progress``."""
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, total=None, **kw):
            bars.append(total)

        def update(self, n):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.setattr(data, "_file_digest", lambda p: "0" * 32)
    f = tmp_path / "a.jpg"
    f.write_bytes(b"x")
    st = os.stat(f)

    def sized(size):
        fields = list(st)
        fields[6] = size
        return os.stat_result(fields, {k: getattr(st, k) for k in (
            "st_atime_ns", "st_mtime_ns", "st_ctime_ns")})

    def bar_for(items, progress=True):
        bars.clear()
        data._DigestCache(None).digests(items, progress=progress)
        return len(bars)

    assert bar_for([(str(f), sized(1000))] * 3) == 0
    assert bar_for([(str(f), sized(256 * 2**20))]) == 0
    assert bar_for([(str(f), sized(256 * 2**20 + 1))]) == 1
    assert bar_for([(str(f), sized(256 * 2**20 + 1))], progress=False) == 0
    assert bar_for([(str(f), sized(10))] * 5000) == 0
    assert bar_for([(str(f), sized(10))] * 5001) == 1


def test_a_damaged_dataset_description_is_one_line_naming_the_folder(tmp_path):
    """A reused preparation whose dataset_info.json lost a field TFDS does not need (hand
    edited, merged from another copy) was a KeyError traceback from the shard check."""
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(_smooth(64, 80, 1)).save(d / "a.png")
    src = data.prepare_folder([str(d)], data_dir=str(tmp_path / "t"), workers=1)
    version_dir = Path(src.report["data_dir"])
    info = json.loads((version_dir / "dataset_info.json").read_text())
    del info["name"]
    (version_dir / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError) as e:
        data.prepare_folder([str(d)], data_dir=str(tmp_path / "t"), workers=1)
    assert str(e.value) == (f"{version_dir}: cannot read the prepared data's description "
                            "('name'); delete this folder to prepare it again")


@pytest.mark.parametrize("damage", ["cut short", "empty", "shard length not a number", "{}", "[]"])
def test_an_unparsable_dataset_description_is_one_line_naming_the_folder(tmp_path, damage):
    """TFDS parses a reused preparation's dataset_info.json when the builder is made, before
    the shard check: one cut short (a full disk, a copy stopped half way), emptied, or with a
    shard length that is not a number was a protobuf ParseError traceback; one that is ``{}``
    or ``[]`` a TFDS AssertionError (the version does not match)."""
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(_smooth(64, 80, 1)).save(d / "a.png")
    src = data.prepare_folder([str(d)], data_dir=str(tmp_path / "t"), workers=1)
    version_dir = Path(src.report["data_dir"])
    path = version_dir / "dataset_info.json"
    text = path.read_text()
    if damage == "cut short":
        path.write_text(text[:100])
    elif damage == "empty":
        path.write_text("")
    elif damage in ("{}", "[]"):
        path.write_text(damage)
    else:
        info = json.loads(text)
        info["splits"][0]["shardLengths"] = ["many"]
        path.write_text(json.dumps(info))
    with pytest.raises(ConfigError) as e:
        data.prepare_folder([str(d)], data_dir=str(tmp_path / "t"), workers=1)
    msg = str(e.value)
    assert msg.startswith(f"{version_dir}: cannot read the prepared data's description (")
    assert msg.endswith("); delete this folder to prepare it again") and "\n" not in msg


def test_a_shard_check_of_a_description_that_is_no_object_is_one_line(tmp_path):
    """The shard check read ``.get`` of the description and of each split: a list there was
    an AttributeError traceback."""
    for bad in ("[]", '{"splits": ["train"]}'):
        (tmp_path / "dataset_info.json").write_text(bad)
        with pytest.raises(ConfigError) as e:
            data._check_prepared_files(tmp_path)
        assert str(e.value).startswith(f"{tmp_path}: cannot read the prepared data's description (")
        assert str(e.value).endswith("delete this folder to prepare it again")


def test_saving_digests_waits_for_another_jobs_lock(tmp_path, monkeypatch):
    """The merge of the digest file is done under an exclusive lock: without it two jobs that
    read the file before either wrote kept only one job's entries (the other's folder was read
    in full again on every start)."""
    import fcntl
    import threading

    monkeypatch.setattr(data._DigestCache, "RACY_S", 0.0)
    monkeypatch.setattr(data, "DIGEST_FALLBACK", str(tmp_path / "user" / "digests.json"))
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "a.bmp")
    root = tmp_path / "tfds"
    root.mkdir()
    cache = data._DigestCache(root)
    cache.digests([(str(d / "a.bmp"), os.stat(d / "a.bmp"))])
    with open(root / ".file_digests.lock", "a") as held:  # another job holds the lock
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        saver = threading.Thread(target=cache.save, args=([str(d)],))
        saver.start()
        saver.join(0.5)
        assert saver.is_alive() and not (root / "file_digests.json").exists()
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    saver.join(10)
    assert _cached_paths(root) == {os.path.realpath(d / "a.bmp")}


def test_training_notes_images_mostly_too_small_for_its_sizes(tmp_path):
    """A user's 100-px paintings were upscaled ~2.6-4.6x by training (to a shorter side of
    258-456 px) without a word: a role mostly made of such images gets one line; the
    shipped data (224-px paintings: 1.15x at the smallest size) gets none."""
    small, ok = tmp_path / "small", tmp_path / "ok"
    for d, side, n in ((small, 100, 3), (ok, 224, 9)):
        d.mkdir()
        for i in range(n):
            Image.fromarray(_smooth(side, side + 20 * i, i)).save(d / f"p{i}.png")
    cfg = {"content_dirs": [str(ok)], "style_dirs": [str(small)], "data_dir": str(tmp_path / "t"),
           "style_resize_range": (258, 456), "image_size": 128, "content_scale_range": (2.0, 2.3)}
    srcs = data.prepare(cfg)
    assert srcs["style"].short_sides == [100, 100, 100]
    assert data.upscale_notes(srcs, cfg) == [
        "style: 3 of 3 images are under 172 px on their shorter side (the smallest 100 px): "
        "training resizes them to 258 px or more (data.style_resize_range), i.e. upscales them "
        "over 1.5x, and learns blurred strokes; larger images avoid it (data.style_unsharp "
        "sharpens part of it back)"]
    assert data.upscale_notes(srcs, {**cfg, "style_size": 128,
                                      "style_resize_range": (140, 200)}) == []
    mixed = data.prepare({**cfg, "style_dirs": [str(small), str(ok)]})  # 3 of 12: 25%
    assert len(data.upscale_notes(mixed, cfg)) == 1
    srcs["style"].short_sides = None  # (prepared before the sizes were recorded)
    assert data.upscale_notes(srcs, cfg) == []
    # content: 224 px photos at 128 x 2.0 = 256 px (1.14x): no note; at 4x, a note
    assert data.upscale_notes(srcs, {**cfg, "content_scale_range": (4.0, 4.2)})[0].startswith(
        "content: 9 of 9 images are under 341 px")
    # large paintings stored at data.max_source_side, below the sizes drawn (image_size 512
    # with the default cap: stored at 512, drawn at up to 912, without a word)
    big = tmp_path / "big"
    big.mkdir()
    for i in range(3):
        Image.fromarray(_smooth(300, 340 + 10 * i, i)).save(big / f"b{i}.png")
    capped = {**cfg, "style_dirs": [str(big)], "max_source_side": 128, "style_size": 128,
              "style_resize_range": (160, 288), "image_size": 96,
              "content_scale_range": (1.0, 1.2)}
    srcs = data.prepare(capped)
    assert srcs["style"].short_sides == [128, 128, 128]
    assert data.upscale_notes(srcs, capped) == [
        "style: 3 of 3 images were stored at data.max_source_side (128 px on their shorter "
        "side) but training resizes them up to 288 px (data.style_resize_range), i.e. upscales "
        "them up to 2.25x; prepare them with a max_source_side of 288 or more "
        "(--max-source-side, or --set data.max_source_side)"]
    assert data.upscale_notes(srcs, {**capped, "max_source_side": 288}) == []  # (cap >= sizes)


def test_copies_across_two_listed_folders_are_named(tmp_path, caplog):
    """A painting in two listed style folders (a download folder and a curated copy) was
    trained on twice without a word (copies inside one folder were named): named once per
    run, in one line; skipped files (two empty ones) are not copies, and one folder alone
    says nothing."""
    a, b = tmp_path / "wikiart", tmp_path / "mine"
    a.mkdir(), b.mkdir()
    for i in range(3):
        Image.fromarray(_smooth(96, 128, i)).save(a / f"p{i}.png")
    shutil.copyfile(a / "p1.png", b / "favourite.png")
    shutil.copyfile(a / "p2.png", b / "other.png")
    Image.fromarray(_smooth(96, 128, 7)).save(b / "own.png")
    (a / "e.jpg").write_bytes(b"")
    (b / "e.jpg").write_bytes(b"")
    cfg = {**data.default_data_config(), "source": "folder", "content_dirs": [str(a)],
           "data_dir": str(tmp_path / "t")}
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.data"):
        data.prepare({**cfg, "style_dirs": [str(a)]}, roles=("style",))
        assert not [r for r in caplog.records if "byte-for-byte" in r.getMessage()]
        src = data.prepare({**cfg, "style_dirs": [str(a), str(b)]}, roles=("style",))["style"]
    assert len(src) == 3 + 3
    warned = [r.getMessage() for r in caplog.records if "byte-for-byte" in r.getMessage()]
    assert warned == [f"2 files under one of the listed style folders are byte-for-byte copies "
                      f"of files under another (e.g. {b / 'favourite.png'} = {a / 'p1.png'}): "
                      "each copy is one more image to train on, so that image weighs more; "
                      "remove the copies to weigh every image once"], warned


def test_exact_copies_are_named_when_prepared(tmp_path, caplog):
    """A painting saved twice (two downloads, a copy in another subfolder) was trained on twice
    without a word: preparation says how many files are copies and names one pair; the images
    are all kept (a copy may be meant to weigh more), skipped and unread files not counted."""
    d = tmp_path / "paintings"
    (d / "again").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_smooth(96, 128, i)).save(d / f"p{i}.png")
    shutil.copyfile(d / "p1.png", d / "again" / "p1 copy.png")
    shutil.copyfile(d / "p1.png", d / "p9.png")
    for name in ("e1.jpg", "e2.jpg"):  # (two empty files share a digest: skipped, not copies)
        (d / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.data"):
        report = data.prepare_folder([str(d)], data_dir=str(tmp_path / "t"),
                                     progress=False).report
    assert report["num_prepared"] == 5 and report["num_skipped"] == 2
    warned = [r.getMessage() for r in caplog.records if "byte-for-byte" in r.getMessage()]
    assert warned == [f"2 files are byte-for-byte copies of others (e.g. {d / 'p1.png'} = "
                      f"{d / 'again' / 'p1 copy.png'}): each copy is one more image to train "
                      "on, so that image weighs more; remove the copies to weigh every image "
                      "once"], warned
    files = [("/x/a", "f/a", 1, "d1"), ("/x/b", "f/b", 1, "d1"), ("/x/c", "f/c", 1, "d1"),
             ("/x/h", "f/h", 1, "not read"), ("/x/i", "f/i", 1, "not read")]
    assert data._exact_copies(files) == [("f/b", "f/a"), ("f/c", "f/a")]
    assert data._exact_copies(files, {"f/a"}) == [("f/c", "f/b")]
