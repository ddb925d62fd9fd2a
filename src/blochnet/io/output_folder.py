"""Output folders: checked before any work, and held by one run at a time.

:func:`check_output_folder` creates the folder (with its parents) and proves that files
can be written in it, so that a wrong ``--out`` is answered in one line before the data
are read. :func:`claim_output_folder` also takes an advisory lock (``.blochnet.lock`` in
the folder, ``flock``; the operating system releases it when the process ends, even on
SIGKILL), so that a second run into the same folder is refused with the first one's
process id instead of overwriting its checkpoint and results.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from blochnet.errors import ConfigurationError

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_NAME = ".blochnet.lock"

_held: dict[Path, OutputFolder] = {}


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written in
    it; raises :class:`~blochnet.errors.ConfigurationError` naming the folder and the
    cause. Returns the folder."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(
            f"output folder {folder}: exists and is a file, not a folder; "
            "choose another output folder (--out)"
        )
    blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigurationError(
            f"output folder {folder}: cannot be created, {blocker} is a file, not a folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            f"output folder {folder}: cannot be created ({_reason(error)})"
        ) from None
    probe = folder / f".blochnet-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigurationError(
            f"output folder {folder}: files cannot be written in it ({_reason(error)})"
        ) from None
    return folder


def claim_output_folder(path: str | os.PathLike[str]) -> OutputFolder:
    """:func:`check_output_folder`, then the folder's lock; use as a context manager.

    A folder already held by another live process raises
    :class:`~blochnet.errors.ConfigurationError` naming that process. Claiming a folder
    this process already holds is allowed (nested claims)."""
    folder = check_output_folder(path).resolve()
    if folder in _held:
        _held[folder].depth += 1
        return _held[folder]
    claim = OutputFolder(folder)
    _held[folder] = claim
    return claim


class OutputFolder:
    """A locked output folder (see :func:`claim_output_folder`)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder
        self.depth = 1
        self._handle = None
        if fcntl is None:  # pragma: no cover
            return
        handle = open(folder / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigurationError(
                f"output folder {folder}: another blochnet run is writing to it ({holder}); "
                "wait for it to end or choose another output folder (--out)"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Give the folder back (the outermost of nested claims unlocks it)."""
        self.depth -= 1
        if self.depth > 0:
            return
        _held.pop(self.path, None)
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _reason(error: OSError) -> str:
    """The operating system's reason, without Python's repetition of the path."""
    return (error.strerror or type(error).__name__).lower()
