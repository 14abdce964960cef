"""img2dataset output folders written as img2dataset 1.47 writes them (checked against a real run
against the loopback server: file names, the .json fields, the shard parquet's columns)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import polars as pl

COLUMNS = [
    "caption",
    "url",
    "key",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "exif",
    "sha256",
]


def write_output(folder: Path, layout: str, rows: list[dict[str, object]]) -> Path:
    """``rows``: key, url, caption, and either ``image`` (bytes) or ``error_message``.
    One shard, 00000, in the ``files`` or ``webdataset`` layout, with its parquet and stats."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    table = []
    members: list[tuple[str, bytes]] = []
    for row in rows:
        data = row.get("image")
        ok = isinstance(data, bytes)
        meta = {
            "caption": row["caption"],
            "url": row["url"],
            "key": row["key"],
            "status": "success" if ok else "failed_to_download",
            "error_message": None if ok else row["error_message"],
            "width": None,
            "height": None,
            "original_width": None,
            "original_height": None,
            "exif": "{}" if ok else None,
            "sha256": hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else None,
        }
        table.append(meta)
        if isinstance(data, bytes):
            key = str(row["key"])
            members += [
                (f"{key}.jpg", data),
                (f"{key}.txt", str(row["caption"]).encode()),
                (f"{key}.json", json.dumps(meta, indent=4).encode()),
            ]
    if layout == "files":
        shard = folder / "00000"
        shard.mkdir(exist_ok=True)
        for name, data in members:
            (shard / name).write_bytes(data)
    else:
        with tarfile.open(folder / "00000.tar", "w") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    pl.DataFrame(table, schema=dict.fromkeys(COLUMNS, pl.String)).write_parquet(
        folder / "00000.parquet"
    )
    n_ok = sum(1 for t in table if t["status"] == "success")
    (folder / "00000_stats.json").write_text(json.dumps({"count": len(table), "successes": n_ok}))
    return folder
