"""Pretrained weights: the local cache first, one quick network check, then a download.

Hub libraries retry a failed download for about a minute before giving up. Here a missing
file costs at most one TCP connection attempt of :data:`PROBE_TIMEOUT` seconds per host and
process, and then one :class:`~puretools.errors.WeightsNotFoundError` that names the file to
fetch and where to put it; no environment variable (``HF_HUB_OFFLINE``) is needed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import torch

from .errors import WeightsNotFoundError

__all__ = [
    "PROBE_TIMEOUT",
    "hf_cache_dir",
    "hf_cached_files",
    "hf_endpoint",
    "hf_offline",
    "load_pretrained",
    "network_available",
    "torch_hub_file",
]

T = TypeVar("T")

#: Seconds one network check may take (name look-up and TCP connect together).
PROBE_TIMEOUT = 3.0

_reachable: dict[tuple[str, int], bool] = {}


def _endpoint(url: str) -> tuple[str, int]:
    """The host and port a connection to ``url`` opens: the proxy's when one is configured."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (80 if parts.scheme == "http" else 443)
    proxy = urllib.request.getproxies().get(parts.scheme or "https")
    if proxy and host and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        return p.hostname or host, p.port or (443 if p.scheme == "https" else 80)
    return host, port


def network_available(url: str, timeout: float | None = None) -> bool:
    """True when a TCP connection towards ``url`` (its host, or the proxy in use) opens in time.

    Checked once per host and process, within ``timeout`` seconds (default
    :data:`PROBE_TIMEOUT`). The name look-up runs in a background thread, so a
    resolver that hangs also costs at most ``timeout`` seconds.

    Examples
    --------
    >>> network_available("https://localhost:1/", timeout=0.5)  # nothing listens on port 1
    False
    """
    timeout = PROBE_TIMEOUT if timeout is None else timeout
    key = _endpoint(url)
    if key in _reachable:
        return _reachable[key]
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(key, timeout=timeout).close()
            result.append(True)
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="puretools-network-check")
    thread.start()
    thread.join(timeout)
    _reachable[key] = bool(result and result[0])
    return _reachable[key]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hf_offline_requested() -> bool:
    import huggingface_hub.constants as constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return bool(constants.HF_HUB_OFFLINE) or _truthy(env)


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """Inside the block, Hugging Face downloads read the local cache only (no network call).

    Examples
    --------
    >>> import huggingface_hub.constants as constants
    >>> with hf_offline():
    ...     constants.HF_HUB_OFFLINE
    True
    """
    import huggingface_hub.constants as constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def hf_cache_dir() -> str:
    """The Hugging Face hub cache that downloads go to (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``).

    Examples
    --------
    >>> Path(hf_cache_dir()).name  # doctest: +SKIP
    'hub'
    """
    import huggingface_hub.constants as constants

    return str(constants.HF_HUB_CACHE)


def hf_endpoint() -> str:
    """The Hugging Face endpoint downloads come from (``$HF_ENDPOINT`` moves it).

    Examples
    --------
    >>> hf_endpoint().startswith("http")
    True
    """
    import huggingface_hub.constants as constants

    return str(constants.ENDPOINT)


def hf_cached_files(
    repo_id: str, filenames: Sequence[str], cache_dir: str | os.PathLike | None = None
) -> list[Path]:
    """The files of ``filenames`` that the Hugging Face cache holds for ``repo_id`` (no network).

    Examples
    --------
    >>> import tempfile
    >>> hf_cached_files("timm/resnet18.a1_in1k", ["model.safetensors"], cache_dir=tempfile.mkdtemp())
    []
    """
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo_id.partition("@")
    found = []
    for name in filenames:
        path = try_to_load_from_cache(
            repo, name, cache_dir=None if cache_dir is None else str(cache_dir), revision=revision or None
        )
        if isinstance(path, str) and Path(path).is_file():
            found.append(Path(path))
    return found


def torch_hub_file(url: str) -> Path:
    """Where torch hub keeps the download of ``url``: ``$TORCH_HOME/hub/checkpoints/<file name>``.

    Examples
    --------
    >>> torch_hub_file("https://example.org/models/resnet18-f37072fd.pth").name
    'resnet18-f37072fd.pth'
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(url).path).name


def load_pretrained(
    load: Callable[[], T],
    *,
    what: str,
    cached: Callable[[], list[Path]],
    url: str,
    fetch: str,
    hugging_face: bool,
) -> T:
    """Run ``load()`` (which loads pretrained weights), never waiting on a network that is absent.

    1. When ``cached()`` finds the weights file on disk, ``load()`` runs with Hugging Face in
       offline mode (no network call at all); if that fails the file is corrupt or truncated,
       and the error names it and says to delete it.
    2. Otherwise one quick check whether ``url``'s host can be reached (:func:`network_available`;
       for Hugging Face also ``HF_HUB_OFFLINE``): if not, the error says so at once.
    3. Otherwise ``load()`` downloads; any failure becomes a :class:`WeightsNotFoundError`.

    Parameters
    ----------
    load : callable
        Builds the model with its pretrained weights.
    what : str
        What is being loaded, for the messages (``"timm model 'resnet50.a1_in1k'"``).
    cached : callable
        Returns the paths of the weights file(s) already on disk (empty: none).
    url : str
        Where the download would come from.
    fetch : str
        The sentence that says which file to fetch, where to put it, and the alternatives.
    hugging_face : bool
        The download goes through the Hugging Face hub.

    Raises
    ------
    WeightsNotFoundError

    Examples
    --------
    >>> load_pretrained(lambda: "weights", what="a model", cached=lambda: [Path(".")],
    ...                 url="https://localhost:1/", fetch="", hugging_face=False)
    'weights'
    """
    found = cached()
    if found:
        try:
            with hf_offline() if hugging_face else contextlib.nullcontext():
                return load()
        except Exception as err:
            raise WeightsNotFoundError(
                f"The weights file of {what} at {str(found[0])!r} could not be loaded "
                f"({type(err).__name__}: {str(err)[:300]}): it is corrupt or truncated (an interrupted "
                "download?). Delete that file and retry, which downloads it again; or " + fetch
            ) from err
    reason = None
    if hugging_face and _hf_offline_requested():
        reason = "HF_HUB_OFFLINE is set"
    elif not network_available(url):
        host, port = _endpoint(url)
        reason = f"no network: {host}:{port} could not be reached within {PROBE_TIMEOUT:g} s"
    if reason is not None:
        raise WeightsNotFoundError(
            f"The weights of {what} are not in the local cache and cannot be downloaded ({reason}). "
            + fetch[:1].upper() + fetch[1:]
        )
    try:
        return load()
    except Exception as err:
        raise WeightsNotFoundError(
            f"Could not download the weights of {what} ({type(err).__name__}: {str(err)[:300]}). "
            + fetch[:1].upper() + fetch[1:]
        ) from err
