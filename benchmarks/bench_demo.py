"""Time the demo world end to end, stage by stage, through the same library calls the assets make.

Run by hand: ``.venv/bin/python benchmarks/bench_demo.py [--images 400]``; prints a table.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blindspot_assets.config import parse_config
from blindspot_assets.encoders.dinov2 import extract_features, load_encoder
from blindspot_assets.generators.registry import build_generator
from blindspot_assets.generators.runner import generate_image_set
from blindspot_assets.sae import (
    encode_features_to_codes,
    load_sae,
    save_sae,
    train_sae,
)
from blindspot_assets.sources.demo import fetch
from blindspot_assets.stats import (
    compute_concept_stats,
    flag_blindspots,
    top_images_per_concept,
)
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    args = ap.parse_args()
    import yaml

    repo = Path(__file__).resolve().parent.parent
    raw: dict[str, Any] = yaml.safe_load((repo / "configs" / "demo.yaml").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    raw["data_root"] = str(tmp / "data")
    raw["encoder"]["model_id"] = str(tmp / "tiny-dinov2")
    raw["real"]["n_images"] = args.images
    cfg = parse_config(raw)
    rows: list[tuple[str, float, str]] = []

    def stage(name: str, fn: Callable[[], Any], unit: Callable[[Any], str] = lambda _: "") -> Any:
        t0 = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t0, unit(out)))
        return out

    real = stage("real_images", lambda: fetch(cfg.real, cfg.layout.real_images, cfg.seed))
    for m in cfg.models:
        stage(
            f"generated_images[{m}]",
            lambda m=m: generate_image_set(
                build_generator(cfg.models[m]), m, real, cfg.layout.generated_images(m)
            ),
        )
    encoder = stage("load encoder", lambda: load_encoder(cfg.encoder))
    for ds in [REAL, *cfg.models]:
        stage(
            f"features[{ds}]",
            lambda ds=ds: extract_features(
                encoder,
                read_manifest(cfg.layout.images(ds)),
                cfg.layout.images(ds),
                cfg.layout.features(ds),
            ),
            lambda s: f"{s.images_per_s:.0f} img/s",
        )
    d = int(RowStore.open(cfg.layout.features(REAL)).array("tokens").shape[2])
    result = stage(
        "sae (train)",
        lambda: train_sae(
            [cfg.layout.features(REAL)],
            cfg.sae.model.sized(d),
            cfg.sae.train,
        ),
        lambda r: f"R2={r.metrics.get('r2', float('nan')):.3f}",
    )
    save_sae(result.model, cfg.layout.sae, {"data_version": result.data_version})
    model, _ = load_sae(cfg.layout.sae)
    for ds in [REAL, *cfg.models]:
        stage(
            f"codes[{ds}]",
            lambda ds=ds: encode_features_to_codes(
                model, cfg.layout.features(ds), cfg.layout.codes(ds), cfg.sae.k_max_store
            ),
        )
    params = cfg.stats.params
    for m in cfg.models:
        stats = stage(
            f"concept_stats[{m}]",
            lambda m=m: compute_concept_stats(cfg.layout.codes(REAL), cfg.layout.codes(m), params),
        )
        stage(
            f"blindspots[{m}]", lambda s=stats: flag_blindspots(s, params), lambda f: f"{f.height}"
        )
    stage("top images (real)", lambda: top_images_per_concept(cfg.layout.codes(REAL), 20))

    total = sum(r[1] for r in rows)
    print(f"\nDemo world, {args.images} real images, {len(cfg.models)} models, 2-core CPU")
    print(f"{'stage':<28}{'seconds':>10}  note")
    for name, sec, note in rows:
        print(f"{name:<28}{sec:>10.2f}  {note}")
    print(f"{'total':<28}{total:>10.2f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
