"""Atomic file writes: a temporary file in the destination's folder, flushed, fsynced, then
renamed over the destination, so readers (and a crash) see the old file or the new one, never a
half-written one. Images have their own richer writer (:func:`arbitrary_nst.images.save_image`:
no-clobber links, one-line errors).

Every writer gives its result the mode a plain ``open()`` would (``0o666 & ~umask``), or the
mode of the file it replaces: ``mkstemp`` creates ``0600`` files, and a model export or a fitted
style that only its creator can read is a surprise on a shared machine or a web server."""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from .errors import ImageError


#: ``(folder, topmost folder created with it)`` for each :func:`make_dir` that created
#: folders in this process: a command that then fails removes them if they are still empty
#: (:func:`remove_created_dirs`), so that a job stopped by a bad style leaves no empty
#: ``out/deep/`` behind.
CREATED_DIRS: list[tuple[Path, Path]] = []


def make_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents) if needed, or raise one-line ImageErrors
    naming it as ``what``: it is a file, a parent is a file, or it cannot be created."""
    p = Path(path)
    if lexists(p) and not p.is_dir():
        if p.is_symlink() and not p.exists():  # ("is not a directory" of a link to a folder)
            raise ImageError(path, f"{what} is a link to {os.readlink(p)}, which does not "
                                   "exist (or is part of a loop)")
        raise ImageError(path, f"{what} is not a directory")
    top = None
    for q in [p, *p.parents]:  # the topmost folder this call creates, if any
        if os.path.lexists(q):
            break
        top = q
    try:
        p.mkdir(parents=True, exist_ok=True)
        if top is not None:
            CREATED_DIRS.append((p, top))
    except (FileExistsError, NotADirectoryError):
        # (a dangling link on the way was "a parent path is not a directory" too)
        blocking = next((q for q in p.parents if os.path.lexists(q)), None)
        if blocking is not None and blocking.is_symlink() and not blocking.exists():
            raise ImageError(path, f"cannot create {what}: {blocking} is a link to "
                                   f"{os.readlink(blocking)}, which does not exist (or is part "
                                   "of a loop)") from None
        raise ImageError(path, f"cannot create {what}: a parent path is not a directory") from None
    except OSError as e:
        raise ImageError(path, f"cannot create {what}: {e.strerror or e}") from None
    return p


@contextlib.contextmanager
def removing_new_empty_dirs():
    """For a command's work: if it raises (a user error, Ctrl-C, a bug), the folders
    :func:`make_dir` created meanwhile and that are still empty are removed (a bad --style found
    after --out-dir a/b was made left a/b)."""
    CREATED_DIRS.clear()
    try:
        yield
    except BaseException:
        remove_created_dirs()
        raise


def remove_created_dirs() -> None:
    """Remove the folders :func:`make_dir` created in this process that are still empty
    (newest first, each up to the topmost one it created; a folder holding anything stays).
    For a command that failed: what it created for outputs it never wrote."""
    while CREATED_DIRS:
        leaf, top = CREATED_DIRS.pop()
        for q in [leaf, *leaf.parents]:
            try:
                q.rmdir()  # (only an empty folder)
            except OSError:
                break
            if q == top:
                break


def os_reason(e: OSError) -> str:
    """An OSError's reason in a message's words (one line, no errno number)."""
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if e.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop)"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, NotADirectoryError):  # ("photo.jpg/" said "no such file")
        return ("not a directory (a file named as a folder: a '/' after it, or a folder on its "
                "path that is a file)")
    text = " ".join(str(e.strerror or e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a regular file to read ("no such file", "is a directory", a symlink
    loop, "not a regular file" for a pipe, socket or device, where opening it can wait for ever
    without a signal getting through), or None."""
    try:
        st = os.stat(path)
    except OSError as e:
        return os_reason(e)
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device)"
    return None


def file_identity(path: str | os.PathLike) -> tuple:
    """A cache key for a file's contents: real path, mtime, ctime, inode and size. ctime and
    inode too: a file replaced by one of the same size with its mtime kept (cp -p, rsync -t,
    coarse mtimes, two quick atomic rewrites) is a new file all the same. Raises OSError."""
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)


def lexists(path: str | os.PathLike) -> bool:
    """``os.path.lexists``, but a name the filesystem cannot hold (longer than 255 bytes, a
    NUL byte) is a one-line ImageError rather than an OSError from the first stat."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except ValueError as e:  # embedded NUL
        raise ImageError(os.fspath(path), f"not a valid file name: {e}") from None
    except OSError as e:
        raise ImageError(os.fspath(path), f"cannot use this path: {e.strerror or e}") from None
    return True


def same_file_key(path: str | os.PathLike) -> tuple:
    """What tells whether two paths name one file, however it is reached: an existing file's
    (device, inode), which a second path to it shares (a bind mount or second mount of its
    folder, a hard link, a case variant on a case-insensitive disk; resolving links alone
    missed those, and an output through such a path replaced an input); else, for a file not
    written yet, its folder's (device, inode) and its name; else its resolved path."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
        return ("file", st.st_dev, st.st_ino)
    except (OSError, ValueError):
        pass
    real = os.path.realpath(p)
    folder, name = os.path.split(real)
    try:
        st = os.stat(folder)
        return ("name", st.st_dev, st.st_ino, name)
    except (OSError, ValueError):
        return ("path", real)


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, links resolved."""
    p, top = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([p, top]) == top


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create the folder ``path`` if needed and make sure files can be created in it, before
    any work is done (one-line ImageErrors)."""
    p = make_dir(path, what)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".nst-write-test.", dir=p)
    except OSError as e:
        raise ImageError(path, f"cannot create files in this {what}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)
    return p


def check_output_file(path: str | os.PathLike, *, overwrite: bool,
                      inputs: Iterable[str | os.PathLike] = (),
                      suffixes: Iterable[str] | None = None, folder_hint: str = "") -> Path:
    """Everything that can be known about writing the output file ``path`` before the work
    that produces it (one-line ImageErrors): a supported suffix, not a folder, not one of the
    ``inputs`` (never, even with ``overwrite``), not an existing file unless ``overwrite``, a
    file name the filesystem can hold, and a folder that exists (or is created) and is
    writable. ``folder_hint``: what a folder given as ``path`` should have been, for commands
    that have one (``"a folder of outputs is --out-dir"``). Returns ``path`` as a Path."""
    p = Path(path)
    if len(os.fsencode(p.name)) > 255:  # (before lstat, whose ENAMETOOLONG says less)
        raise ImageError(p, "cannot write: file name too long (more than 255 bytes)")
    exists = lexists(p)
    if exists and p.is_dir():  # (first: it said "unsupported output format (no extension)")
        raise ImageError(p, "is a directory, expected an output file name"
                            + (f" ({folder_hint})" if folder_hint else ""))
    if suffixes is not None and p.suffix.lower() not in {x.lower() for x in suffixes}:
        raise ImageError(p, f"unsupported output format ({p.suffix or 'no extension'}); use "
                            f"one of {', '.join(sorted(suffixes))}")
    same = same_file_key(p)
    if any(same == same_file_key(i) for i in inputs):
        raise ImageError(p, "would overwrite an input file; choose another output")
    if exists and not overwrite:
        raise ImageError(p, "exists; pass --overwrite to replace it")
    check_writable_dir(p.parent if str(p.parent) else ".")
    return p


#: bytes mkstemp adds to a prefix from :func:`temp_prefix`: 8 random characters and ".tmp"
_TEMP_EXTRA = 8 + len(".tmp")


def temp_prefix(name: str) -> str:
    """``mkstemp`` prefix (use ``suffix=".tmp"``) of the hidden temporary file an output
    ``name`` is written to before its rename: ``".name."``, with the name cut (at a character
    boundary, marked ``~``) so that the temporary name fits the 255-byte limit of a file name
    whenever ``name`` itself does (a 250-byte output name failed after all the work)."""
    room = 255 - _TEMP_EXTRA - len(b"..")
    raw = os.fsencode(name)
    if len(raw) <= room:
        return f".{name}."
    cut = raw[:room - 1].decode("utf-8", errors="ignore")  # (drops a split character)
    return f".{cut}~."


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then rename it to
    ``path`` (replacing it). Creates the parent folder; removes the temporary file on error.

    A destination that cannot be written (a folder, a parent that is a file, no permission, a
    full disk) raises :class:`~arbitrary_nst.errors.ImageError` ``"path: cannot write: why"``,
    one line for the CLIs; other errors of ``write`` propagate unchanged."""
    dst = Path(path)
    if dst.is_dir():
        raise ImageError(dst, "cannot write: is a directory, expected a file name")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ImageError(dst, "cannot write: a parent path is not a directory") from None
    except OSError as e:
        raise ImageError(dst, f"cannot write: {e.strerror or e}") from None
    remove_stale_temps(dst)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dst.name), suffix=".tmp",
                                   dir=dst.parent)
    except OSError as e:
        raise ImageError(dst, f"cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        set_new_file_mode(tmp, dst)
        os.replace(tmp, dst)
    except OSError as e:
        _remove(tmp)
        raise ImageError(dst, f"cannot write: {e.strerror or e}") from None
    except BaseException:
        _remove(tmp)
        raise
    return dst


#: a temporary file of :func:`write_atomically` this old is a killed writer's (kill -9, a
#: power cut: never renamed nor removed); younger ones may be another process writing now
STALE_TEMP_SECONDS = 3600
_STALE_TEMPS: dict[str, dict[str, list[str]]] = {}  # folder -> temp prefix -> stale files
_STALE_LOCK = threading.Lock()


def remove_stale_temps(dst: Path) -> None:
    """Remove the temporary files that killed writes of ``dst`` left next to it (hidden
    ``.name.XXXXXXXX.tmp``: a batch killed midway left one per image being written, which its
    rerun writes again; an export left its size), once they are :data:`STALE_TEMP_SECONDS`
    old. A folder is listed once per process (a batch writes thousands of files into one)."""
    folder = os.path.abspath(dst.parent)
    with _STALE_LOCK:
        if folder not in _STALE_TEMPS:
            found: dict[str, list[str]] = {}
            now = time.time()
            try:
                with os.scandir(folder) as it:
                    for e in it:
                        if (e.name.startswith(".") and e.name.endswith(".tmp")
                                and len(e.name) > _TEMP_EXTRA + 2
                                and e.is_file(follow_symlinks=False)
                                and now - e.stat(follow_symlinks=False).st_mtime
                                > STALE_TEMP_SECONDS):
                            found.setdefault(e.name[:-_TEMP_EXTRA], []).append(e.path)
            except OSError:
                pass
            _STALE_TEMPS[folder] = found
        stale = _STALE_TEMPS[folder].pop(temp_prefix(dst.name), [])
    for path in stale:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def set_new_file_mode(tmp: str | os.PathLike, replaced: str | os.PathLike | None = None) -> None:
    """Give ``tmp`` (from ``mkstemp``: 0600) the mode of the file it will replace, if there is
    one, else the mode a plain ``open()`` would create (``0o666 & ~umask``). Best effort."""
    try:
        if replaced is not None and os.path.isfile(replaced):
            mode = os.stat(replaced).st_mode & 0o7777
        else:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
    except OSError:
        pass


def _umask() -> int:
    """The process umask, read without changing it where possible (Linux), else 0o022."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def link_no_clobber(tmp: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the finished temporary file ``tmp`` to ``dst`` only if ``dst`` does not exist,
    atomically where possible; an existing ``dst`` is a one-line ImageError."""
    try:
        os.link(tmp, dst)  # fails if dst exists: no window for a concurrent writer
    except FileExistsError:
        raise ImageError(dst, "exists; pass overwrite=True (or --overwrite)") from None
    except OSError:
        # Filesystems without hard links (FAT, some network/overlay mounts): check + rename.
        if os.path.lexists(dst):
            raise ImageError(dst, "exists; pass overwrite=True (or --overwrite)") from None
        os.replace(tmp, dst)
    else:
        os.unlink(tmp)


def output_name(content_stem: str, tag: str, suffix: str = ".png", keep: str = "") -> str:
    """``{content}__{tag}{keep}{suffix}``; when that is longer than a file name can be (255
    bytes: three 92-character style names failed at write time, after the work) ``tag`` (the
    styles' part) is cut and a hash of it added, so different mixes keep different names;
    ``keep`` (the settings, :func:`_batch_tag`) stays whole and readable; a content name too long
    for even that is cut as well. Names that fit are unchanged. (The batch outputs of
    ``infer.py`` and evaluate's ``<content>__<style>.png``.)"""
    name = f"{content_stem}__{tag}{keep}{suffix}"
    if len(os.fsencode(name)) <= 255:
        return name
    import hashlib

    digest = hashlib.sha1(os.fsencode(tag)).hexdigest()[:8]
    room = 255 - len(os.fsencode(f"{content_stem}__~{digest}{keep}{suffix}"))
    if room < 1:
        # the content's own name is long (80 CJK characters are 240 bytes: a name the disk
        # holds, whose every output name failed): the content's part is cut too, and the
        # hash is of both parts (two photos with one long beginning keep two names)
        digest = hashlib.sha1(os.fsencode(f"{content_stem}\0{tag}")).hexdigest()[:8]
        tag_head = os.fsencode(tag)[:40].decode("utf-8", "ignore")
        room = 255 - len(os.fsencode(f"__{tag_head}~{digest}{keep}{suffix}"))
        if room < 1:  # (the settings alone fill a name: the output check reports it)
            return name
        head = os.fsencode(content_stem)[:room].decode("utf-8", "ignore")
        return f"{head}__{tag_head}~{digest}{keep}{suffix}"
    head = os.fsencode(tag)[:room].decode("utf-8", "ignore")
    return f"{content_stem}__{head}~{digest}{keep}{suffix}"
