"""Files written whole or not at all: ``.slim`` files, decoded PNGs and the evaluation harness's bitstreams."""

import os
import tempfile
from typing import BinaryIO, Callable, Union


def write_atomically(path: Union[str, os.PathLike], data: Union[bytes, Callable[[BinaryIO], None]]) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` so that ``path`` only
    ever holds the old file or the complete new one.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the file is renamed over
    ``path``; if anything fails on the way the temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".slim-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
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
