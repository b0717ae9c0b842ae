"""arbitrary_nst.files: atomic writes, and the mode their results get (not mkstemp's 0600)."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from arbitrary_nst import files
from arbitrary_nst.errors import ImageError

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


# ------------------------------------------------------------------ checks before the work


def test_make_dir_and_lexists_name_what_is_wrong(tmp_path):
    from arbitrary_nst.errors import ImageError

    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(ImageError) as e:
        files.make_dir(a_file, "the workdir")
    assert str(e.value) == f"{a_file}: the workdir is not a directory"
    with pytest.raises(ImageError) as e:
        files.make_dir(a_file / "sub", "the workdir")
    assert str(e.value) == (f"{a_file / 'sub'}: cannot create the workdir: a parent path is "
                            "not a directory")
    assert files.make_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    # a path under a file does not exist (NotADirectoryError from the stat): False, no error
    assert files.lexists(a_file / "x") is False
    assert files.lexists(tmp_path / "missing") is False and files.lexists(a_file) is True
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    assert files.lexists(tmp_path / "dangling") is True  # the link itself exists
    # a folder under a dangling link: named as such (it said "a parent path is not a
    # directory", true of neither)
    with pytest.raises(ImageError) as e:
        files.make_dir(tmp_path / "dangling" / "sub" / "deeper")
    assert str(e.value) == (f"{tmp_path / 'dangling' / 'sub' / 'deeper'}: cannot create output "
                            f"folder: {tmp_path / 'dangling'} is a link to "
                            f"{tmp_path / 'missing'}, which does not exist (or is part of a "
                            "loop)")
    with pytest.raises(ImageError, match="not a valid file name"):
        files.lexists(tmp_path / "a\0b")


def test_is_inside_compares_whole_path_components(tmp_path):
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "outer").mkdir()
    assert files.is_inside(tmp_path / "out", tmp_path / "out")
    assert files.is_inside(tmp_path / "out" / "sub" / "x.png", tmp_path / "out")
    assert not files.is_inside(tmp_path / "outer" / "x.png", tmp_path / "out")  # a prefix only
    assert not files.is_inside(tmp_path / "out", tmp_path / "out" / "sub")
    os.symlink(tmp_path / "out" / "sub", tmp_path / "link")
    assert files.is_inside(tmp_path / "link" / "x.png", tmp_path / "out")  # links resolved


def test_check_writable_dir_leaves_nothing_behind(tmp_path):
    assert files.check_writable_dir(tmp_path / "new") == tmp_path / "new"
    assert list((tmp_path / "new").iterdir()) == []
    files.check_writable_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_check_output_file_refusals(tmp_path):
    from arbitrary_nst.errors import ImageError

    src = tmp_path / "in.png"
    src.write_bytes(b"input")
    ok = files.check_output_file(tmp_path / "Out.PNG", overwrite=False, suffixes={".png", ".jpg"})
    assert ok == tmp_path / "Out.PNG"  # the suffix is compared case-insensitively
    with pytest.raises(ImageError) as e:
        files.check_output_file(tmp_path / "o.gif", overwrite=True, suffixes={".png", ".jpg"})
    assert str(e.value) == (f"{tmp_path / 'o.gif'}: unsupported output format (.gif); use one of "
                            ".jpg, .png")
    with pytest.raises(ImageError) as e:
        files.check_output_file(src, overwrite=False)
    assert str(e.value) == f"{src}: exists; pass --overwrite to replace it"
    assert files.check_output_file(src, overwrite=True) == src
    # an input is never overwritten, also when named another way (.., a link)
    other_name = tmp_path / "sub" / ".." / "in.png"
    (tmp_path / "sub").mkdir()
    os.symlink(src, tmp_path / "link.png")
    for p in (src, other_name, tmp_path / "link.png"):
        with pytest.raises(ImageError, match="would overwrite an input file"):
            files.check_output_file(p, overwrite=True, inputs=[src])
    with pytest.raises(ImageError, match="would overwrite an input file"):
        files.check_output_file(src, overwrite=True, inputs=[str(tmp_path / "link.png")])
    # 130 two-byte characters: 134 characters, but 264 bytes (one-line error, before the work)
    for long in (tmp_path / ("é" * 130 + ".png"), tmp_path / "new" / ("é" * 130 + ".png")):
        with pytest.raises(ImageError) as e:  # (in an existing folder lstat said less)
            files.check_output_file(long, overwrite=False)
        assert e.value.reason == "cannot write: file name too long (more than 255 bytes)"
    assert not (tmp_path / "x").exists()
    # the folder is created (and checked) before the work
    assert files.check_output_file(tmp_path / "x" / "y" / "o.png", overwrite=False).name == "o.png"
    assert (tmp_path / "x" / "y").is_dir() and list((tmp_path / "x" / "y").iterdir()) == []
    with pytest.raises(ImageError) as e:
        files.check_output_file(src / "o.png", overwrite=False)
    assert str(e.value) == f"{src}: output folder is not a directory"


def test_temp_prefix_cuts_at_character_boundaries():
    room = 255 - 12 - 2  # the longest name kept whole: "." name "." + 8 random + ".tmp"
    assert files.temp_prefix("a" * room) == "." + "a" * room + "."
    assert files.temp_prefix("a" * (room + 1)) == "." + "a" * (room - 1) + "~."
    # "a" + 120 two-byte characters + ".png" (245 bytes): the cut at byte 240 splits a character,
    # which is dropped (not replaced by a 3-byte U+FFFD, which made the name too long)
    name = "a" + "é" * 120 + ".png"
    assert files.temp_prefix(name) == ".a" + "é" * 119 + "~."
    assert len(files.temp_prefix(name).encode()) + 12 <= 255


def test_name_cut_inside_a_character_is_written(tmp_path):
    name = "a" + "é" * 120 + ".bin"
    p = files.write_atomically(tmp_path / name, lambda f: f.write(b"x"))
    assert p.read_bytes() == b"x" and [q.name for q in tmp_path.iterdir()] == [name]


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_atomically(p, interrupted)
    assert p.read_bytes() == b"old" and [q.name for q in tmp_path.iterdir()] == ["x.bin"]


@pytest.mark.parametrize("hard_links", [True, False])
def test_link_no_clobber_moves_once_and_never_replaces(tmp_path, monkeypatch, hard_links):
    from arbitrary_nst.errors import ImageError

    if not hard_links:
        def no_links(src, dst, **kw):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_links)
    tmp, dst = tmp_path / ".t.tmp", tmp_path / "d.png"
    tmp.write_bytes(b"new")
    files.link_no_clobber(tmp, dst)
    assert dst.read_bytes() == b"new" and not tmp.exists()  # moved, not copied
    tmp.write_bytes(b"newer")
    with pytest.raises(ImageError) as e:
        files.link_no_clobber(tmp, dst)
    assert str(e.value) == f"{dst}: exists; pass overwrite=True (or --overwrite)"
    assert dst.read_bytes() == b"new" and tmp.read_bytes() == b"newer"


# ------------------------------------------------------------------ mutation-testing additions


def test_a_failed_write_with_an_os_error_is_one_line_and_leaves_no_temporary(tmp_path):
    """A full disk inside ``write`` (an OSError): the one-line ImageError, the old file kept,
    and the temporary file removed as for any other failure."""
    import errno

    from arbitrary_nst.errors import ImageError

    p = tmp_path / "x.bin"
    p.write_bytes(b"old")

    def full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ImageError) as e:
        files.write_atomically(p, full)
    assert str(e.value) == f"{p}: cannot write: No space left on device"
    assert p.read_bytes() == b"old"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.bin"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_the_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    """Durability: the finished temporary file (all its bytes) is fsynced while the
    destination still holds the old contents, i.e. before the rename over it."""
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        with open(target, "rb") as f:
            synced.append((os.path.basename(target), f.read(), p.read_bytes()))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    files.write_atomically(p, lambda f: f.write(b"new data"))
    assert len(synced) == 1
    name, data, dst_then = synced[0]
    assert name.startswith(".x.bin.") and name.endswith(".tmp")
    assert data == b"new data" and dst_then == b"old"
    assert p.read_bytes() == b"new data"


def test_an_output_name_of_exactly_255_bytes_passes_the_check(tmp_path):
    """255 bytes is the filesystem's limit (allowed); 256 is the first refused."""
    from arbitrary_nst.errors import ImageError

    ok = tmp_path / ("a" * 251 + ".png")
    assert len(ok.name.encode()) == 255
    assert files.check_output_file(ok, overwrite=False, suffixes={".png"}) == ok
    files.write_atomically(ok, lambda f: f.write(b"x"))  # (and the filesystem takes it)
    assert ok.read_bytes() == b"x"
    with pytest.raises(ImageError, match="file name too long"):
        files.check_output_file(tmp_path / ("a" * 252 + ".png"), overwrite=False)


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(tmp_path):
    """kill -9 during a write left the hidden temporary file for good (a batch: one per image
    being written; an export: its size). The next write of that file removes it once it is an
    hour old; a younger one (another process may be writing) and other files stay."""
    import time

    old = time.time() - files.STALE_TEMP_SECONDS - 60
    stale = tmp_path / f"{files.temp_prefix('out.png')}a1b2c3d4.tmp"
    young = tmp_path / f"{files.temp_prefix('out.png')}e5f6g7h8.tmp"
    other = tmp_path / f"{files.temp_prefix('other.png')}i9j0k1l2.tmp"
    mine = tmp_path / ".notes.tmp"
    for p in (stale, young, other, mine):
        p.write_bytes(b"")
    for p in (stale, other, mine):
        os.utime(p, (old, old))
    files.write_atomically(tmp_path / "out.png", lambda f: f.write(b"x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [young.name, other.name, mine.name, "out.png"])
    from arbitrary_nst import images  # (the images' own writer: a batch's outputs)

    images.save_image(tmp_path / "other.png", np.zeros((4, 4, 3), np.uint8))
    assert not other.exists() and young.exists() and mine.exists()


def test_a_dangling_link_as_an_output_folder_says_so(tmp_path):
    """``--out-dir link`` whose target folder is gone said "output folder is not a
    directory", of a link made to one."""
    os.symlink(tmp_path / "gone", tmp_path / "link")
    with pytest.raises(ImageError) as e:
        files.make_dir(tmp_path / "link")
    assert str(e.value) == (f"{tmp_path / 'link'}: output folder is a link to "
                            f"{tmp_path / 'gone'}, which does not exist (or is part of a loop)")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ImageError, match="output folder is not a directory$"):
        files.make_dir(tmp_path / "file")


def test_same_file_key_tells_one_file_reached_by_two_paths(tmp_path):
    """A hard link (as a bind mount's second path, or a case variant on a case-insensitive
    disk, it has the same device and inode): one file; a file not written yet is its folder's
    identity and its name, so a folder reached through a link gives the same key."""
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "hard.png")
    (tmp_path / "b.png").write_bytes(b"x")
    assert files.same_file_key(a) == files.same_file_key(tmp_path / "hard.png")
    assert files.same_file_key(a) != files.same_file_key(tmp_path / "b.png")
    os.symlink(tmp_path, tmp_path.parent / f"{tmp_path.name}-link")
    alias = tmp_path.parent / f"{tmp_path.name}-link"
    assert files.same_file_key(alias / "new.png") == files.same_file_key(tmp_path / "new.png")
    assert files.same_file_key(alias / "new.png") != files.same_file_key(tmp_path / "new2.png")
    assert files.same_file_key(tmp_path / "no" / "x.png")[0] == "path"
    with pytest.raises(ImageError, match="would overwrite an input file"):
        files.check_output_file(tmp_path / "hard.png", overwrite=True, inputs=[a])


def test_file_identity_sees_an_in_place_rewrite_with_the_mtime_kept(tmp_path):
    """Same path, same inode, same size, mtime restored (``touch -r``): only the ctime tells
    the new contents apart, and it must."""
    import time

    p = tmp_path / "m.bin"
    p.write_bytes(b"aaaa")
    st = os.stat(p)
    first = files.file_identity(p)
    assert first == files.file_identity(p)  # unchanged file: same key
    time.sleep(0.05)  # (ctimes are from a coarse clock)
    with open(p, "r+b") as f:  # rewritten in place: same inode
        f.write(b"bbbb")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = os.stat(p)
    assert (st2.st_ino, st2.st_size, st2.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    assert files.file_identity(p) != first


def test_file_identity_sees_another_inode_with_the_same_times(tmp_path, monkeypatch):
    """Two files whose times and size agree (coarse timestamps, cp -p on a filesystem that
    keeps them) are told apart by their inode; the key starts with the real path."""
    from types import SimpleNamespace

    p = tmp_path / "m.bin"
    p.write_bytes(b"aaaa")
    real = os.stat(p)
    same = {k: getattr(real, k) for k in ("st_mtime_ns", "st_ctime_ns", "st_size", "st_mode")}
    stats = iter([SimpleNamespace(st_ino=1000, **same), SimpleNamespace(st_ino=1001, **same)])
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: next(stats))
    a, b = files.file_identity(p), files.file_identity(p)
    monkeypatch.undo()
    assert a != b
    assert a[0] == os.path.realpath(p)


# ------------------------------------------------------------------ empty folders of a failure


def test_a_failure_removes_only_the_empty_folders_made_during_it(tmp_path):
    """``removing_new_empty_dirs``: on any exception (Ctrl-C too) the folders ``make_dir``
    created inside the block and left empty are removed, nested ones newest first and each up
    to the topmost one it created; folders made before the block, folders that existed (even
    empty) and folders holding a file stay."""
    from arbitrary_nst.errors import ConfigError

    files.make_dir(tmp_path / "before" / "x")  # (outside the block: not this command's)
    (tmp_path / "there").mkdir()
    (tmp_path / "kept").mkdir()
    for exc in (ConfigError("bad"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with files.removing_new_empty_dirs():
                files.make_dir(tmp_path / "a" / "b")
                files.make_dir(tmp_path / "a" / "b" / "c" / "d")  # (inside the first)
                files.make_dir(tmp_path / "there" / "x" / "y")
                files.make_dir(tmp_path / "kept")  # (existed, empty)
                files.make_dir(tmp_path / "full" / "z")
                (tmp_path / "full" / "z" / "f.txt").write_text("x")
                raise exc
        assert sorted(p.name for p in tmp_path.iterdir()) == ["before", "full", "kept",
                                                              "there"], exc
        assert (tmp_path / "before" / "x").is_dir() and not list((tmp_path / "there").iterdir())
        assert (tmp_path / "full" / "z" / "f.txt").is_file()
    # no exception: nothing is removed
    with files.removing_new_empty_dirs():
        files.make_dir(tmp_path / "ok" / "deep")
    assert (tmp_path / "ok" / "deep").is_dir()
