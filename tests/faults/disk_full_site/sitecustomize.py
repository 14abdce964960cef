"""A full disk for the CLI runs of ``test_cli_crash``: Python imports this module at start-up
when its folder is on PYTHONPATH. ``$BLINDSPOT_FAULT_DISK_FULL`` picks what fails after half a
file is on disk: ``parquet`` (every table write) or ``report`` (the report page)."""

import errno
import os
import pathlib

_KIND = os.environ.get("BLINDSPOT_FAULT_DISK_FULL", "")


def _full(target: object) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(target))


if _KIND == "parquet":
    import polars as pl

    def _write_parquet(self: object, file: object, *args: object, **kwargs: object) -> None:
        if hasattr(file, "write"):
            file.write(b"PAR1 half a file")
        else:
            pathlib.Path(str(file)).write_bytes(b"PAR1 half a file")
        raise _full(file)

    pl.DataFrame.write_parquet = _write_parquet  # type: ignore[method-assign,assignment]

elif _KIND == "report":
    _write_text = pathlib.Path.write_text

    def _page_write(self: pathlib.Path, data: str, *args: object, **kwargs: object) -> int:
        if self.name.startswith(".index.html."):
            _write_text(self, data[: len(data) // 2], *args, **kwargs)  # type: ignore[arg-type]
            raise _full(self)
        return _write_text(self, data, *args, **kwargs)  # type: ignore[arg-type]

    pathlib.Path.write_text = _page_write  # type: ignore[method-assign,assignment]
