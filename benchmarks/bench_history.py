"""Image-history policies on photo-like worlds: how many concepts a faithful PNG model gets
flagged beside real JPEGs, and what the nuisance probe's history arm says, per policy.

    .venv/bin/python benchmarks/bench_history.py RUN_CONFIG [RUN_CONFIG ...]

Each RUN_CONFIG is a world of ``tests/worlds/photo_world.py`` whose graph has run once under the
default policy (``tests/worlds/photo_world.run_world``), with a model named ``faithful``: its
SAE is reused; for each policy the real and the faithful images are encoded
again (the same SAE: the concept vocabulary is held fixed so that only the policy changes), and
the concept statistics recomputed. Policies:

- ``as_stored``: the files as they lie on disk (real JPEG vs generated PNG);
- ``common q75``: one common JPEG pass at 75, no history (the earlier default);
- ``median match``: one common pass at the real set's median quality, no history;
- ``per-pair history`` (the default): each generated image through its paired real file's
  JPEG encode, then the common q75 pass.

Printed: a table per world (flags of the faithful model, flags of the probe's history arm,
seconds), then the same as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blindspot_assets.config import load_config  # noqa: E402
from blindspot_assets.encoders.dinov2 import extract_features, load_encoder  # noqa: E402
from blindspot_assets.encoders.images import generated_histories, policy_of_run  # noqa: E402
from blindspot_assets.sae.checkpoint import load_sae  # noqa: E402
from blindspot_assets.sae.encode import encode_features_to_codes  # noqa: E402
from blindspot_assets.stats.concepts import compute_concept_stats  # noqa: E402
from blindspot_assets.stats.run_tables import nuisance_effects  # noqa: E402
from blindspot_assets.store.images import read_manifest  # noqa: E402

POLICIES = {
    "as_stored": {"codec": "as_stored", "history": "none"},
    "common q75": {"codec": "jpeg", "quality": 75, "history": "none"},
    "median match": {"codec": "jpeg", "quality": "match_real", "history": "none"},
    "per-pair history": {"codec": "jpeg", "quality": 75, "history": "match_real"},
}


def measure(config: Path, name: str, fields: dict[str, object], scratch: Path) -> dict[str, object]:
    cfg = load_config(config)
    cfg = dataclasses.replace(
        cfg,
        images=dataclasses.replace(cfg.images, **fields),
        data_root=scratch,  # probe and stores of this policy apart from the run's
    )
    base = load_config(config)
    t0 = time.perf_counter()
    encoder = load_encoder(cfg.encoder, policy_of_run(cfg.images, base.layout.real_images))
    sae = load_sae(base.layout.sae)[0]
    codes = {}
    for dataset, image_dir, histories in (
        ("real", base.layout.real_images, None),
        (
            "faithful",
            base.layout.generated_images("faithful"),
            generated_histories(cfg.images, base.layout.real_images),
        ),
    ):
        features = scratch / f"{dataset}-features.zarr"
        codes[dataset] = scratch / f"{dataset}-codes.zarr"
        manifest = read_manifest(image_dir)
        extract_features(encoder, manifest, image_dir, features, histories=histories)
        encode_features_to_codes(sae, features, codes[dataset], cfg.sae.k_max_store)
    stats = compute_concept_stats(codes["real"], codes["faithful"], cfg.stats.params)
    # the probe reads the run's real images, SAE and real codes; it rebuilds the run's probe
    # stores for this policy (the run's nuisance_effects table is not rewritten)
    probe_cfg = dataclasses.replace(
        cfg, data_root=base.layout.root, stats=dataclasses.replace(cfg.stats, probe_images=300)
    )
    effects = nuisance_effects(probe_cfg, encoder)
    history = effects.filter(effects["nuisance"] == "history")
    return {
        "world": config.parent.name,
        "policy": name,
        "faithful_significant": int(stats["significant"].sum()),
        "probe_history_significant": int(history["significant"].sum()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+", type=Path)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/bench-history"))
    args = ap.parse_args()
    rows = []
    for config in args.configs:
        for name, fields in POLICIES.items():
            scratch = args.scratch / config.parent.name / name.replace(" ", "_")
            scratch.mkdir(parents=True, exist_ok=True)
            rows.append(measure(config, name, fields, scratch))
            print(rows[-1], flush=True)
    print(f"\n{'world':<16} {'policy':<18} {'faithful flags':>15} {'probe flags':>12} {'s':>7}")
    for r in rows:
        print(
            f"{r['world']:<16} {r['policy']:<18} {r['faithful_significant']:>15} "
            f"{r['probe_history_significant']:>12} {r['seconds']:>7}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
