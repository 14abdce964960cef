"""store/atomic.py: the one temporary-file + rename writer every file write goes through."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from blindspot_assets.store.atomic import (
    temporary_name,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "lineage.json"
    write_json_atomic(path, {"model": "a", "n": 1})
    assert json.loads(path.read_text()) == {"model": "a", "n": 1}

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text('{"model": "b"')  # half of the new file, then the disk fills up
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, half_then_fail)
    assert json.loads(path.read_text()) == {"model": "a", "n": 1}
    assert [p.name for p in path.parent.iterdir()] == ["lineage.json"]


def test_concurrent_writers_of_one_file_never_mix(tmp_path: Path) -> None:
    path = tmp_path / "image.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    assert len({temporary_name(path).name for _ in range(3)}) == 1  # per process and thread
    assert temporary_name(path).name.startswith(".image.bin.")  # hidden from image listings
    threads = [threading.Thread(target=write_bytes_atomic, args=(path, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_bytes() in payloads  # one writer's whole file, not a mix
    assert [p.name for p in tmp_path.iterdir()] == ["image.bin"]
