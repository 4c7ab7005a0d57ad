"""Writing result files safely: one atomic safetensors writer, the clean-up of its temporary
files, and the checks of an output path done before any work.

Every safetensors file puretools writes (cache entries, checkpoints, ``--out`` files, the toy
model) goes through :func:`atomic_save_file`: a temporary file in the same folder, named
``.<file>.puretools-<host>-<pid>-<random>.tmp``, written, flushed to disk (``fsync``), then
renamed over the target (``os.replace``). A reader sees the old file or the new one, never half
a file. A process killed mid-write leaves only such a temporary file, and the next write or read
in that folder removes it (:func:`remove_stale_temps`): at once when its writer, a process of
this machine, is gone; after :data:`STALE_TEMP_SECONDS` when it was written by another machine
(a shared folder), so a concurrent run's file in progress is never pulled from under it.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import PuretoolsError

__all__ = [
    "STALE_TEMP_SECONDS",
    "TEMP_MARK",
    "atomic_save_file",
    "check_output_file",
    "check_output_folder",
    "remove_stale_temps",
    "temp_path",
]

#: A temporary file whose writer cannot be checked (another machine) is removed after this age.
STALE_TEMP_SECONDS = 3600

#: Part of every temporary file's name: what :func:`remove_stale_temps` looks for, and nothing else.
TEMP_MARK = ".puretools-"

_HOST = (socket.gethostname() or "host").replace(".", "_").replace("-", "_")


def _umask() -> int:
    try:  # Linux: read it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary file beside ``path`` that a write of this process goes through.

    Examples
    --------
    >>> name = temp_path("/tmp/x/refs.safetensors").name
    >>> name.startswith(".refs.safetensors.puretools-") and name.endswith(".tmp")
    True
    """
    path = Path(path)
    return path.parent / f".{path.name}{TEMP_MARK}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def _writer(tmp: Path) -> tuple[str, int] | None:
    """(host, pid) of a temporary file's writer, from its name; None for another pattern."""
    name = tmp.name
    if not (name.startswith(".") and name.endswith(".tmp") and TEMP_MARK in name):
        return None
    tail = name[:-4].rsplit(TEMP_MARK, 1)[1]  # <host>-<pid>-<random>
    parts = tail.split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def remove_stale_temps(folder: str | os.PathLike, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete the temporary files of killed puretools writes in ``folder``; return them.

    Only files of puretools' own pattern (see :func:`temp_path`) are touched. A file written
    on this machine goes as soon as its writer process is gone; one from another machine (or
    one whose writer cannot be told) once it is older than ``max_age`` seconds.
    Never raises: a folder that cannot be listed is left alone.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> orphan = folder / f".refs.safetensors{TEMP_MARK}{_HOST}-999999999-abcdef01.tmp"
    >>> _ = orphan.write_bytes(b"half a file")
    >>> [p.name == orphan.name for p in remove_stale_temps(folder)], orphan.exists()
    ([True], False)
    """
    removed: list[Path] = []
    try:
        candidates = [p for p in Path(folder).expanduser().iterdir() if TEMP_MARK in p.name]
    except OSError:
        return removed
    now = time.time()
    for tmp in candidates:
        writer = _writer(tmp)
        if writer is None:
            continue
        host, pid = writer
        try:
            if host == _HOST:
                if _alive(pid):
                    continue
            elif tmp.stat().st_mtime > now - max_age:
                continue
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def atomic_save_file(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` as safetensors to ``path`` atomically (temporary file, fsync, rename).

    Stale temporary files of killed writes in the folder are removed first. The file gets the
    permissions of any new file (``0666`` minus the umask). On failure the temporary file is
    removed and the error (``OSError``, ``SafetensorError``) propagates: the caller decides
    whether that is a warning (a cache) or an error (``--out``).

    Parameters
    ----------
    tensors : dict str -> Tensor
    path : path
    metadata : dict str -> str or None

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from safetensors.torch import load_file
    >>> path = Path(tempfile.mkdtemp()) / "x.safetensors"
    >>> _ = atomic_save_file({"x": torch.arange(3)}, path)
    >>> load_file(path)["x"], [p.name for p in path.parent.iterdir()]
    (tensor([0, 1, 2]), ['x.safetensors'])
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        save_file(tensors, str(tmp), metadata=metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    try:  # the rename itself survives a power cut once the folder is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def _writable_folder(folder: Path, show: str, fix: str) -> None:
    """Create ``folder`` if missing and write (then delete) a probe file in it: permission bits
    alone do not tell (root passes ``os.access`` on read-only mounts and on /proc)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PuretoolsError(f"{show}: {str(existing)!r} is a file, not a folder. {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".puretools-probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PuretoolsError(
            f"{show}: the folder {str(folder)!r} is not writable ({err.strerror or err}). {fix}"
        ) from None


def check_output_file(path: str | os.PathLike, suffix: str = ".safetensors", name: str = "--out") -> Path:
    """Check, before any work, that a result can be written to ``path``; return it as a Path.

    Refused: a name without ``suffix``, an existing directory, a folder that is a file or that
    this process cannot write to (the folder is created later, at the write).

    Examples
    --------
    >>> check_output_file("/tmp/refs.safetensors")
    PosixPath('/tmp/refs.safetensors')
    >>> check_output_file("/tmp/refs.pt")
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: --out /tmp/refs.pt: the result file must end in .safetensors; e.g. --out /tmp/refs.safetensors.
    """
    text = str(path)
    target = Path(text).expanduser()
    show = f"{name} {text}" if name.startswith("--") else f"{name}={text!r}"
    if not target.name.endswith(suffix) or target.name == suffix:
        example = target.with_name(target.stem + suffix) if target.stem else target / ("result" + suffix)
        eg = f"{name} {example}" if name.startswith("--") else f"{name}={str(example)!r}"
        raise PuretoolsError(f"{show}: the result file must end in {suffix}; e.g. {eg}.")
    if target.is_dir():
        raise PuretoolsError(f"{show} is a directory; name a file inside it, e.g. {target / ('result' + suffix)}.")
    _writable_folder(target.parent, show, "Pick a folder you can write to.")
    if target.exists() and not os.access(target, os.W_OK):
        raise PuretoolsError(f"{show}: the file exists and is not writable. Pick another file name.")
    return target


def check_output_folder(path: str | os.PathLike, name: str = "--out") -> Path:
    """Check, before any work, that files can be written into the folder ``path`` (made later).

    Examples
    --------
    >>> check_output_folder("/tmp/toy-seed1")
    PosixPath('/tmp/toy-seed1')
    """
    text = str(path)
    target = Path(text).expanduser()
    show = f"{name} {text}" if name.startswith("--") else f"{name}={text!r}"
    if target.exists() and not target.is_dir():
        raise PuretoolsError(f"{show} is a file; it must be a folder (it is created if missing).")
    _writable_folder(target, show, "Pick a folder you can write to.")
    return target

