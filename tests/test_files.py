"""arbitrary_nst.files: atomic writes, and the mode their results get (not mkstemp's 0600)."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from arbitrary_nst import files

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@posix_only
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_file_gets_the_mode_open_would_give(tmp_path, umask, mask, expected):
    umask(mask)
    p = files.write_atomically(tmp_path / "sub" / "x.bin", lambda f: f.write(b"abc"))
    assert p.read_bytes() == b"abc" and _mode(p) == expected
    with open(tmp_path / "plain.bin", "wb"):
        pass
    assert _mode(tmp_path / "plain.bin") == expected  # the reference: a plain open()


@posix_only
def test_replacing_keeps_the_replaced_files_mode(tmp_path, umask):
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")
    p.chmod(0o640)
    files.write_atomically(p, lambda f: f.write(b"new"))
    assert p.read_bytes() == b"new" and _mode(p) == 0o640


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.write_atomically(p, boom)
    assert p.read_bytes() == b"old"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.bin"]


def test_unwritable_destinations_are_one_line_image_errors(tmp_path):
    from arbitrary_nst.errors import ImageError

    a_file = tmp_path / "f"
    a_file.write_text("x")
    for dst, reason in ((tmp_path, "is a directory"), (a_file / "x.bin", "not a directory")):
        with pytest.raises(ImageError, match=reason) as e:
            files.write_atomically(dst, lambda f: f.write(b"abc"))
        assert "cannot write" in str(e.value) and "\n" not in str(e.value)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["f"]


@posix_only
def test_model_exports_and_weight_caches_are_readable_by_others(tmp_path, umask, vgg):
    """The writers built on write_atomically: a model export and the VGG16 cache."""
    from flax import nnx

    from arbitrary_nst import weights
    from arbitrary_nst.export import export_model
    from arbitrary_nst.models import ArbitraryStyleModel

    umask(0o022)
    model = ArbitraryStyleModel(vgg, width=0.25, rngs=nnx.Rngs(0))
    assert _mode(export_model(model, tmp_path / "m.safetensors")) == 0o644
    w = {"conv1_1": {"kernel": np.zeros((3, 3, 3, 64), np.float32),
                     "bias": np.zeros(64, np.float32)}}
    assert _mode(weights.write_npz(w, tmp_path / "w.npz")) == 0o644


@pytest.mark.parametrize("name", ["q" * 251 + ".png", "é" * 125 + ".png", "a" * 239 + ".png"])
def test_names_up_to_255_bytes_are_written(tmp_path, name):
    # the temporary file (".name.XXXXXXXX.tmp") is 14 bytes longer than the name: a valid
    # output name of 242..255 bytes failed with "File name too long" after the work was done
    from arbitrary_nst import images

    assert len(name.encode()) <= 255 and len(files.temp_prefix(name).encode()) + 12 <= 255
    img = images.save_image(tmp_path / name, np.zeros((4, 5, 3), np.float32))
    assert images.load_image(img).shape == (4, 5, 3)
    npz = files.write_atomically(tmp_path / (name[:-4] + ".npz"), lambda f: f.write(b"x"))
    assert npz.read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, npz.name])  # no temps
    assert files.temp_prefix("a.png") == ".a.png."  # short names: unchanged
