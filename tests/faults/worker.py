"""A worker process the fault tests SIGKILL mid-run: it runs one library function and prints a
line per unit of progress, so the test knows when to strike.

    python -m tests.faults.worker features|generation|sae ARGS_JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch


def say(msg: str) -> None:
    print(msg, flush=True)


def features(args: dict[str, Any]) -> None:
    """Encode into a row store; after each block's data is on disk (flags not yet), pause."""
    import polars as pl

    from blindspot_assets.config import load_config
    from blindspot_assets.encoders.dinov2 import extract_features, load_encoder
    from blindspot_assets.store.rowstore import RowStore

    cfg = load_config(args["config"])
    original = RowStore.array

    def array(self: RowStore, name: str):  # type: ignore[no-untyped-def]
        if name == "valid":  # write_block writes data, then valid, status and done last
            say("data_written")
            time.sleep(args["pause_s"])
        return original(self, name)

    RowStore.array = array  # type: ignore[method-assign]
    manifest = pl.read_parquet(cfg.layout.real_images / "manifest.parquet")
    extract_features(
        load_encoder(cfg.encoder), manifest, cfg.layout.real_images, Path(args["store"])
    )
    say("finished")


def generation(args: dict[str, Any]) -> None:
    from blindspot_assets.config import load_config
    from blindspot_assets.generators.registry import build_generator
    from blindspot_assets.generators.runner import generate_image_set
    from blindspot_assets.store.images import read_manifest

    cfg = load_config(args["config"])
    gen = build_generator(cfg.model(args["model"]))
    real = read_manifest(cfg.layout.real_images)

    def progress(done: int, total: int) -> None:
        say(f"generated {done}/{total}")
        time.sleep(args["pause_s"])

    generate_image_set(gen, args["model"], real, Path(args["out"]), batch_size=4, progress=progress)
    say("finished")


def sae(args: dict[str, Any]) -> None:
    from blindspot_assets.sae import RASAEConfig, TrainConfig, train_sae

    def log(m: dict[str, Any]) -> None:
        say(f"step {m['step']}")
        time.sleep(args["pause_s"])

    train_sae(
        [Path(args["store"])],
        RASAEConfig(**args["sae"]),
        TrainConfig(**args["train"]),
        checkpoint_dir=Path(args["checkpoints"]),
        log=log,
    )
    say("finished")


if __name__ == "__main__":
    torch.set_num_threads(1)  # the same arithmetic as the test process that compares
    kind, raw = sys.argv[1], json.loads(sys.argv[2])
    {"features": features, "generation": generation, "sae": sae}[kind](raw)
