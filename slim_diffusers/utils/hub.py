"""Where a named model is: the bundled toy model, a folder on this machine, or the Hugging Face Hub.

A model that is not there is found out here, before anything loads: offline (``HF_HUB_OFFLINE=1``) a Hub id that
is not in the local cache fails at once, and with no network one request says so. diffusers and transformers
would otherwise retry every component and end in a chain of tracebacks. Only the standard library is imported at
module level, so the command line can check its inputs without loading torch.
"""

import os
from pathlib import Path
from typing import Optional, Union

# `SLIMPipeline.from_pretrained("toy")` and `slim ... --model toy` name the SLIM model bundled in the package
# (slim_diffusers/assets/toy/slim, what `slim demo` runs); a local folder called toy is `./toy`.
BUNDLED_MODEL = "toy"
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def toy_model_path() -> Path:
    """The folder of the bundled toy SLIM model, for ``SLIMPipeline.from_pretrained`` (``"toy"`` says the same).

    It was trained in the toy world (96×96 images of 20 classes); it decodes best with its own settings,
    :func:`toy_decode_settings`."""
    return ASSETS / "toy" / "slim"


def toy_decode_settings() -> dict:
    """``num_inference_steps`` and ``strength`` the bundled toy model decodes with (``assets/toy/demo.json``; what
    ``slim decompress --model toy`` uses): ``pipe.decompress(bitstream, **toy_decode_settings())``."""
    import json

    settings = json.loads((ASSETS / "toy" / "demo.json").read_text(encoding="utf-8")).get("decode", {})
    return {k: v for k, v in settings.items() if k in ("num_inference_steps", "strength")}


def resolve_model_name(name: Union[str, os.PathLike]) -> Union[str, os.PathLike]:
    """``"toy"`` → the bundled model's folder; anything else unchanged."""
    return str(toy_model_path()) if isinstance(name, str) and name == BUNDLED_MODEL else name


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached(repo_id: str, filename: str, repo_type: str, revision: Optional[str], cache_dir) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision, repo_type=repo_type)
    return isinstance(found, str)


def _what_to_pass(what: str, hint: Optional[str] = None) -> str:
    if hint:
        return hint
    if what == "SLIM model":
        return (f"pass a folder written by SLIMPipeline.save_pretrained, or {BUNDLED_MODEL!r} for the bundled toy model "
                "(slim_diffusers.toy_model_path())")
    return "pass a folder written by save_pretrained"


def missing_model_reason(
    name: Union[str, os.PathLike],
    filename: str = "model_index.json",
    what: str = "model",
    *,
    repo_type: str = "model",
    revision: Optional[str] = None,
    cache_dir=None,
    token=None,
    local_files_only: bool = False,
    hint: Optional[str] = None,
) -> Optional[str]:
    """One sentence saying why ``name`` cannot be loaded, or ``None`` when it is there (or the Hub does not say it
    is missing: a gated repository is left to the loader, which asks for the token).

    ``name`` is a folder holding ``filename`` (``model_index.json`` for a pipeline, ``config.json`` for a model),
    or a Hub id whose ``filename`` is in the local cache or, online, on the Hub. ``hint`` replaces the closing
    advice (what to pass instead)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / filename).is_file():
            return f"{name}: the folder has no {filename}; {_what_to_pass(what, hint)}"
        return None
    if path.exists():
        return f"{name}: is a file, not a {what} folder; {_what_to_pass(what, hint)}"
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = str(name)
    try:
        validate_repo_id(name)
    except HFValidationError:
        return f"{name}: no such folder; {_what_to_pass(what, hint)}"
    if _cached(name, filename, repo_type, revision, cache_dir):
        return None
    hub = "dataset on the Hugging Face Hub" if repo_type == "dataset" else f"{what} on the Hugging Face Hub"
    if _hub_offline() or local_files_only:
        why = "HF_HUB_OFFLINE is set" if _hub_offline() else "local_files_only is set"
        return (f"{name}: no such folder, and {why} and the Hugging Face cache does not hold it; "
                f"{_what_to_pass(what, hint)}, or download it first on a machine with network")
    from huggingface_hub import file_exists
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    missing = f"{name}: no such folder, and no such {hub} (or it has no {filename}); {_what_to_pass(what, hint)}"
    try:
        found = file_exists(name, filename, repo_type=repo_type, revision=revision, token=token)
    except GatedRepoError:
        return None
    except RepositoryNotFoundError:
        return missing
    except HfHubHTTPError:
        return None  # the Hub answered something else (a rate limit, an outage): the loader reports it itself
    except Exception as err:  # noqa: BLE001 — no network: httpx/requests connection errors, timeouts
        return (f"{name}: no such folder, and the Hugging Face Hub cannot be reached ({type(err).__name__}: "
                f"{' '.join(str(err).split())}); {_what_to_pass(what, hint)}, or set HF_HUB_OFFLINE=1 to use the local cache")
    return None if found else missing


def check_model(name, filename: str = "model_index.json", what: str = "model", **kwargs) -> None:
    """Raise :class:`~slim_diffusers.errors.SLIMModelNotFoundError` when :func:`missing_model_reason` gives one."""
    reason = missing_model_reason(name, filename, what, **kwargs)
    if reason is not None:
        from ..errors import SLIMModelNotFoundError

        raise SLIMModelNotFoundError(reason)


def missing_dataset_reason(name: str, flag: str, cache_dir=None, hint: str = "") -> Optional[str]:
    """Offline, one sentence when the Hub dataset ``name`` is in neither huggingface_hub's cache nor the datasets
    cache (``cache_dir``, else datasets' default); ``None`` otherwise. Online, ``datasets`` reports a missing
    dataset itself, after one request. The look-up is lenient (any cached entry carrying the dataset's name): a
    cached dataset must never be refused."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE or Path(name).exists():
        return None
    hub_entry = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    if hub_entry.is_dir():
        return None
    import datasets

    base = name.rsplit("/", 1)[-1].lower()
    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE)
    if root.is_dir() and any(base in entry.name.lower() for entry in root.iterdir()):
        return None
    return (f"{flag} {name}: no such folder, and HF_HUB_OFFLINE is set and no cache holds the Hub dataset "
            f"{name}{hint}")
