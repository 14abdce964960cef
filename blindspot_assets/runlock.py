"""Run a command while holding a lock file: one ``./run demo`` per ``DAGSTER_HOME`` at a time.

``python -m blindspot_assets.runlock LOCKFILE [--wait SECONDS] -- COMMAND ...``

The lock is an ``flock`` on LOCKFILE, shared with the command (its file descriptor is inherited),
so it is held while either process lives and released by the kernel when both are gone — a
SIGKILLed run never leaves a stale lock behind. A second caller waits up to ``--wait`` seconds
(default 0) and then refuses with exit status 75, naming the holder. SIGINT, SIGTERM and SIGHUP
are passed on to the command, so stopping the wrapper stops the run.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

BUSY = 75  # EX_TEMPFAIL


def _try_lock(fd: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def run_locked(lock: Path, command: Sequence[str], wait_s: float = 0.0) -> int:
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_lock(fd, 0.0):
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        if wait_s <= 0 or not _waiting(lock, holder, fd, wait_s):
            print(
                f"{lock.name}: {holder} is running on this DAGSTER_HOME ({lock.parent}); "
                "two at once would write the same stores. Wait for it to finish (or stop it), "
                "then run again; `./run slots` shows the runs in progress.",
                file=sys.stderr,
            )
            return BUSY
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} ({' '.join(command[:2])}...)\n".encode(), 0)
    os.set_inheritable(fd, True)
    child = subprocess.Popen(list(command), pass_fds=(fd,))

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    return 128 - code if code < 0 else code


def _waiting(lock: Path, holder: str, fd: int, wait_s: float) -> bool:
    print(f"{lock.name}: waiting up to {wait_s:.0f} s for {holder} to finish", file=sys.stderr)
    return _try_lock(fd, wait_s)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m blindspot_assets.runlock", usage="%(prog)s LOCK [--wait S] -- COMMAND ..."
    )
    parser.add_argument("lock", type=Path)
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    if "--" not in argv and ({"-h", "--help"} & set(argv)):
        parser.parse_args(argv)  # prints the usage and exits 0
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        parser.error("no command given after --")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    return run_locked(args.lock, argv[split + 1 :], args.wait)


if __name__ == "__main__":
    sys.exit(main())
