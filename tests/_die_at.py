"""Run a Python script and kill it with SIGKILL at a chosen write point: fault injection for the crash-safety tests.

    SLIM_DIE_AT="FUNCTION:N[:SUBSTRING]" python tests/_die_at.py SCRIPT [ARGS...]
    SLIM_DIE_AT="FUNCTION:N[:SUBSTRING]" python tests/_die_at.py -m MODULE [ARGS...]

The process kills itself just before the N-th call of FUNCTION (counting only calls whose path argument contains
SUBSTRING), so everything written before that call is on disk and nothing of the call itself happened; with
``FUNCTION+half`` the call runs, its file (a folder's largest) is cut to half its size, and then the process dies (a write cut short).
``SLIM_DIE_RANK=R`` arms it only in the process of that rank (``RANK`` of a multi-process launch). Only this test
helper reads these variables: the package has no fault-injection code in it.
"""

import functools
import importlib
import os
import runpy
import signal
import sys


def _path_of(name, args, kwargs):
    if name.rpartition(".")[2] in ("rmtree", "remove_tree", "fsync_tree", "write_atomically"):  # (path, ...)
        value = args[0] if args else kwargs.get("path")
    elif name == "datasets.Dataset.save_to_disk":
        value = args[1] if len(args) > 1 else kwargs.get("dataset_path")
    else:  # torch.save(obj, f), save_file(tensors, filename), os.replace(src, dst), os.rename(src, dst)
        value = args[1] if len(args) > 1 else kwargs.get("f", kwargs.get("filename", kwargs.get("dst")))
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else ""


def arm(spec: str) -> None:
    name, count, *rest = spec.split(":", 2)
    half = name.endswith("+half")
    name = name.removesuffix("+half")
    substring = rest[0] if rest else ""
    owner_name, _, attr = name.rpartition(".")
    if owner_name == "datasets.Dataset":
        owner = importlib.import_module("datasets").Dataset
    else:
        owner = importlib.import_module(owner_name)
    real = getattr(owner, attr)
    calls = {"n": 0}

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        path = _path_of(name, args, kwargs)
        if substring in path:
            calls["n"] += 1
            if calls["n"] == int(count):
                if half:
                    real(*args, **kwargs)
                    files = [path] if os.path.isfile(path) else [os.path.join(root, f) for root, _, names in os.walk(path)
                                                                 for f in names]
                    biggest = max(files, key=os.path.getsize)  # a folder (save_to_disk): its largest file
                    with open(biggest, "rb+") as f:
                        f.truncate(os.path.getsize(biggest) // 2)
                sys.stderr.write(f"_die_at: killed at {name} #{count} ({path})\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, attr, wrapper)


if __name__ == "__main__":
    spec = os.environ.get("SLIM_DIE_AT")
    rank = os.environ.get("SLIM_DIE_RANK")
    if spec and (rank is None or rank == os.environ.get("RANK", "0")):
        arm(spec)  # before the script imports what it writes with (``from x import f`` then binds the wrapper)
    if sys.argv[1] == "-m":  # _die_at.py -m MODULE [ARGS...], as python -m
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        script = sys.argv[1]
        sys.argv = sys.argv[1:]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")
