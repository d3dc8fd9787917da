"""Files and folders written whole or not at all.

A process killed at any instant (SIGKILL, an out-of-memory kill, a pre-empted job) leaves every path this module
writes either as it was before or complete, never half-written:

- :func:`write_atomically`: one file (``.slim`` files, decoded PNGs, bit maps, markers, reports);
- :func:`replace_directory`: a finished folder put in place of another (checkpoints, datasets, cached stages);
- :func:`staged_directory`: a folder built under a hidden name and moved into place when complete (a saved
  pipeline, whose ``model_index.json`` appears last, so ``from_pretrained`` never half-loads one).

Data reaches the disk before a rename publishes it (``fsync`` of files and of the folders that hold the names), so
the guarantee also holds across a power loss on file systems that keep the order of metadata operations.
"""

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Union


def _create_temporary(directory: str, mode: int):
    """``(fd, path)`` of a new, empty file in ``directory``, created with permission bits ``mode`` (the kernel applies
    the umask, as it does for ``open()``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = os.path.join(directory, f".slim-{secrets.token_hex(6)}.tmp")
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")


def write_atomically(path: Union[str, os.PathLike], data: Union[bytes, Callable[[BinaryIO], None]]) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` so that ``path`` only
    ever holds the old file or the complete new one.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the file is renamed over
    ``path``; if anything fails on the way the temporary file is removed and ``path`` is left as it was.

    The file gets the permissions ``open(path, "wb")`` would give it: those of the file it replaces, or for a new
    file ``0o666`` less the umask. The temporary file is created with mode ``0o666`` and the kernel applies the
    umask (``tempfile.mkstemp`` would make it ``0o600``); reading the umask with ``os.umask`` instead would set it
    for a moment, for every thread of the process.
    """
    path = os.fspath(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)  # replacing a file keeps its permissions, as open() does
    except FileNotFoundError:
        mode = None
    fd, tmp = _create_temporary(os.path.dirname(os.path.abspath(path)), 0o666 if mode is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def fsync_directory(path: Union[str, os.PathLike]) -> None:
    """Flush a folder's entries (the names that renames and new files put there) to disk; a no-op where folders
    cannot be opened (Windows)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems do not flush folders; the rename itself still holds
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Union[str, os.PathLike]) -> None:
    """Flush every file and folder under ``path`` (and ``path`` itself) to disk."""
    for root, dirs, files in os.walk(os.fspath(path)):
        for name in files:
            file = os.path.join(root, name)
            if os.path.islink(file):
                continue
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        fsync_directory(root)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False  # EINVAL/ENOSYS (a file system or kernel without it): the caller falls back


def _hidden_sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}")


def remove_tree(path: Union[str, os.PathLike]) -> None:
    """Delete a folder so that a kill on the way leaves it whole or gone: it is first renamed to a hidden sibling
    (``.<name>.deleting-*``, swept by :func:`sweep_leftovers`), then removed."""
    path = Path(path)
    if not path.exists():
        return
    trash = _hidden_sibling(path, "deleting")
    os.rename(path, trash)
    fsync_directory(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def replace_directory(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> None:
    """Put the finished folder ``src`` at ``dst``, replacing what is there.

    ``dst`` holds the old folder or the new one at every instant: where the OS can swap two paths atomically
    (Linux) the two are exchanged, then the old one is deleted. Elsewhere the old folder is first moved to a
    hidden sibling, so a kill between the two renames leaves ``dst`` absent and the old folder intact beside it
    (never a mix of the two).
    """
    src, dst = Path(src), Path(dst)
    if not dst.exists() and not dst.is_symlink():
        os.rename(src, dst)
    elif dst.is_dir() and not dst.is_symlink() and _exchange(str(src), str(dst)):
        fsync_directory(dst.parent)
        shutil.rmtree(src, ignore_errors=True)  # now the old folder
    else:
        old = _hidden_sibling(dst, "replaced")
        os.rename(dst, old)
        os.rename(src, dst)
        fsync_directory(dst.parent)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    fsync_directory(dst.parent)


STAGING_TAG = "slim-staging"


def sweep_leftovers(directory: Union[str, os.PathLike], name: Optional[str] = None,
                    tags=(STAGING_TAG, "deleting", "replaced")) -> None:
    """Remove what killed writes of this module left in ``directory``: the hidden staging, deleting and replaced
    folders ``.<name>.<tag>-<hex>`` of the entry ``name`` (of every entry when ``None``; only the owner of a folder
    should sweep it so, never while another process writes there)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if not entry.name.startswith("."):
            continue
        base, _, rest = entry.name[1:].rpartition(".")
        if (name is None or base == name) and any(rest.startswith(f"{tag}-") for tag in tags):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_directory(output_dir: Union[str, os.PathLike], last: Optional[str] = "model_index.json") -> Iterator[Path]:
    """A folder to write into that appears at ``output_dir`` only once it is complete.

    Yields a hidden staging folder. When the block ends without an error, its contents are flushed to disk and
    published: a new ``output_dir`` by one rename; an existing one (which may hold other things, such as a training
    run's checkpoints) entry by entry, with ``last`` (the file that makes the folder loadable, diffusers'
    ``model_index.json``) first removed and put back last. A kill at any point leaves ``output_dir`` with the
    complete previous contents, or the complete new ones, or without ``last`` (nothing that loads), never a mix
    that loads. When the block raises, the staging folder is removed and ``output_dir`` is untouched.
    """
    output_dir = Path(output_dir).absolute()
    if f".{STAGING_TAG}-" in output_dir.name and output_dir.is_dir():
        yield output_dir  # already a staging folder (a save inside a staged save): its owner publishes it
        return
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(output_dir.parent, output_dir.name)
    new = not output_dir.exists()
    stage = _hidden_sibling(output_dir, STAGING_TAG)
    if not new:
        stage = output_dir / stage.name  # inside: the folder may be a mount point, and it may hold other things
        sweep_leftovers(output_dir, output_dir.name)
    stage.mkdir()
    try:
        yield stage
        fsync_tree(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if new:
        os.rename(stage, output_dir)
        fsync_directory(output_dir.parent)
        return
    final_marker = output_dir / last if last else None
    if final_marker is not None and (stage / last).exists() and final_marker.exists():
        final_marker.unlink()  # from here until the end, output_dir does not load
        fsync_directory(output_dir)
    for entry in sorted(stage.iterdir()):
        if entry.name == last:
            continue
        target = output_dir / entry.name
        if entry.is_dir() and not entry.is_symlink():
            replace_directory(entry, target)
        else:
            os.replace(entry, target)
    if last and (stage / last).exists():
        os.replace(stage / last, output_dir / last)
    fsync_directory(output_dir)
    shutil.rmtree(stage, ignore_errors=True)
