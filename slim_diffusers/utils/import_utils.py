"""Lazy package exports: the one mechanism every ``__init__`` of the package uses.

``import slim_diffusers`` (and ``slim info``, which needs only the bitstream module) must not pay for torch,
diffusers and CompressAI; a name listed in a package's exports is imported on first use.
"""

import importlib
from typing import Callable, Dict, List, Tuple


def lazy_exports(package: str, exports: Dict[str, str], namespace: dict) -> Tuple[Callable, Callable, List[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose ``exports`` map a public name to the module that
    defines it; a loaded name is cached in the package's ``namespace`` (its ``globals()``)."""
    names = sorted(exports)

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(names) | {k for k in namespace if not k.startswith("_")})

    return __getattr__, __dir__, names
