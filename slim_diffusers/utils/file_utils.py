"""Files written whole or not at all: ``.slim`` files, decoded PNGs, bit maps and the evaluation harness's files."""

import os
import secrets
import stat
from typing import BinaryIO, Callable, Union


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
