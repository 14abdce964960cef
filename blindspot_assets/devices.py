"""Which device a step computes on: one owner for ``device: auto`` everywhere.

On a box with several cards, the ``gpu`` concurrency pool (``dagster.yaml``) decides how many
GPU steps run at once, but not on which card; each step process would otherwise pick
``cuda:0``. ``choose_device("auto")`` therefore claims a card of its own for the process: the
first card whose lock file it can ``flock`` (``$BLINDSPOT_GPU_LOCK_DIR``, default a folder in
the temp dir), held until the process ends, so N steps on N cards never share one. With every
card taken (a pool limit above the card count: deliberate sharing) it shares the card that its
process id picks. ``CUDA_VISIBLE_DEVICES`` still restricts the cards torch sees.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

import torch

LOCK_DIR_ENV = "BLINDSPOT_GPU_LOCK_DIR"
_claimed: dict[str, tuple[int, IO[bytes]]] = {}  # lock dir → (card, open locked file)


def _lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "blindspot-gpus")


def claim_card(n_cards: int, lock_dir: Path | None = None) -> int:
    """The index of a card this process may use alone while it lives (see the module doc)."""
    folder = lock_dir or _lock_dir()
    key = str(folder)
    if key in _claimed:
        return _claimed[key][0]
    folder.mkdir(parents=True, exist_ok=True)
    for card in range(n_cards):
        fh = open(folder / f"card-{card}.lock", "ab")  # noqa: SIM115 - held open: it is the lock
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        _claimed[key] = (card, fh)
        return card
    return os.getpid() % n_cards


def choose_device(requested: str | None) -> str:
    """``auto``/None: a CUDA card of this process's own when there is one, else the CPU."""
    if requested not in (None, "", "auto"):
        return str(requested)
    if not torch.cuda.is_available():
        return "cpu"
    n = torch.cuda.device_count()
    return "cuda" if n == 1 else f"cuda:{claim_card(n)}"
