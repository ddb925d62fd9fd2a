"""Several processes for one refinement: ``--workers N`` on this machine, or ``torchrun``.

Each process joins a ``torch.distributed`` process group (gloo on CPU, NCCL on CUDA), reads
the files and runs the whole refinement with its share of the frames
(:mod:`blochnet.experiment.shards`); every process ends with the same results. Rank 0
writes the output folder and prints; every other rank writes into a scratch folder of its
own (removed at the end), so that the stages run the same code everywhere, and starts a
``--resume`` from a copy of the output folder's ``config.json`` and ``checkpoint.pt``.

``--workers N`` starts N processes of this program on this machine, on a free loopback
port, each with its share of the CPU cores, and waits for them: Ctrl-C and SIGTERM are
passed on to every process (they finish the epoch, save the checkpoint and stop
together), and when one process fails the others are stopped. Under
``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``) every process joins the group those variables describe.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blochnet.errors import ConfigurationError

_GRACE_S = 20.0  # how long the other processes get to end on their own after one failed


def launched_size() -> int:
    """The number of processes a launcher (``torchrun``) started, from ``WORLD_SIZE`` (1
    without one)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise ConfigurationError(f"WORLD_SIZE={value!r}: expected a whole number") from None
    if size < 1:
        raise ConfigurationError(f"WORLD_SIZE={size}: expected 1 or more")
    return size


def check_gpus(processes: int) -> None:
    """Refuse ``processes`` CUDA processes on this machine where it has fewer GPUs (each
    process needs one of its own)."""
    import torch

    if processes > torch.cuda.device_count():
        raise ConfigurationError(
            f"{processes} processes with --device cuda on this machine: it has "
            f"{torch.cuda.device_count()} GPU(s), and each process needs one of its own; "
            "start fewer processes per machine"
        )


@contextmanager
def process_group(device: str, *, rank: int, size: int, address: str) -> Iterator[None]:
    """Join the process group of ``size`` processes as ``rank`` (``address``: an
    ``init_method`` such as tcp://127.0.0.1:PORT, or env:// under a launcher), and leave it
    at the end."""
    import torch
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":  # one GPU per process: LOCAL_RANK under a launcher, else the rank
        local = int(os.environ.get("LOCAL_RANK", rank))
        check_gpus(local + 1)
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, init_method=address, rank=rank, world_size=size)
    except (RuntimeError, ValueError) as error:
        raise ConfigurationError(
            f"process {rank} of {size}: cannot join the process group at {address} "
            f"({backend}): {error}"
        ) from None
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def output_of_rank(out: Path, rank: int, *, resume: bool) -> Iterator[Path]:
    """The folder a process writes: ``out`` for rank 0, a scratch folder for the others
    (with copies of what a resume reads), removed at the end."""
    if rank == 0:
        yield out
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"blochnet-process-{rank}-"))
    try:
        for name in ("config.json", "checkpoint.pt") if resume else ():
            if (out / name).exists():
                shutil.copyfile(out / name, scratch / name)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_local(size: int, job, arguments: tuple, *, threads: int) -> int:
    """Run ``job(*arguments, rank=r, size=size, address=..., threads=...)`` in ``size``
    fresh processes on this machine; returns the exit status (0 when all ended well,
    otherwise rank 0's, or the first failing process's). The processes' user errors and
    interruptions are printed here, each distinct message once."""
    from blochnet.cli.main import _print_error

    if threads == 0:
        threads = max(1, (os.cpu_count() or 1) // size)
    address = f"tcp://127.0.0.1:{_free_port()}"
    context = multiprocessing.get_context("spawn")
    messages = context.SimpleQueue()
    place = {"size": size, "address": address, "threads": threads}
    children = [
        context.Process(
            target=_child,
            args=(job, arguments, place | {"rank": r}, messages),
            name=f"blochnet-{r}",
        )  # fmt: skip
        for r in range(size)
    ]
    previous = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    # the children have process groups of their own: Ctrl-C and SIGTERM are passed on,
    # and the parent waits for them to save and stop
    for number in previous:
        signal.signal(number, lambda n, _: _pass_on(children, n))
    try:
        for child in children:
            child.start()
        status = _wait(children)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    reported: dict[str, list[int]] = {}
    while not messages.empty():
        rank, message = messages.get()
        reported.setdefault(message, []).append(rank)
    for message, ranks in reported.items():  # (a message of every process once, plainly)
        whose = "" if 0 in ranks or len(ranks) == size else f"process {min(ranks)}: "
        _print_error(whose + message)
    return status


def _child(job, arguments: tuple, place: dict, messages) -> None:
    """One process: run the job; a user error or an interruption goes to ``messages`` as
    (rank, line) for the parent to print once, anything else is printed here with its
    traceback."""
    from blochnet.cli.main import (
        _USER_ERRORS,
        EXIT_INTERRUPTED,
        EXIT_USER_ERROR,
        _message,
        _print_error,
    )

    _detach()
    rank = place["rank"]
    try:
        job(*arguments, **place)
    except _USER_ERRORS as error:
        messages.put((rank, _message(error)))
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt as error:
        if rank == 0:  # (the others say the same of their scratch folders)
            messages.put((rank, f"interrupted ({error})" if str(error) else "interrupted"))
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as error:
        _print_error(f"process {rank}: {type(error).__name__}: {error}")
        traceback.print_exc()
        raise SystemExit(1) from None


def _wait(children) -> int:
    failed_at = None
    while any(c.is_alive() for c in children):
        time.sleep(0.1)
        if failed_at is None and any(c.exitcode not in (None, 0) for c in children):
            failed_at = time.monotonic()
        elif failed_at is not None and time.monotonic() - failed_at > _GRACE_S:
            for c in children:  # stuck waiting in a collective for the one that failed
                if c.is_alive():
                    c.terminate()
    for c in children:
        c.join()
    codes = [c.exitcode for c in children]
    if codes[0] != 0:
        return _status(codes[0])
    return next((_status(c) for c in codes if c != 0), 0)


def _status(code: int) -> int:
    """A child's exit code as a shell status (killed by signal s: 128 + s)."""
    return 128 - code if code < 0 else code


def _pass_on(children, number: int) -> None:
    for child in children:
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, number)


def _detach() -> None:
    """In a child: a process group of its own (the parent passes Ctrl-C on once, so that
    the first signal stops the run after the epoch, not at once), and SIGTERM when the
    parent dies (Linux)."""
    os.setpgid(0, 0)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
