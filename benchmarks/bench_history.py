"""Image-history policies on photo-like worlds: how many concepts a faithful PNG model gets
flagged beside real JPEGs, and what the nuisance probe's history arm says, per policy.

    .venv/bin/python benchmarks/bench_history.py RUN_CONFIG [RUN_CONFIG ...] [--models M ...]

Each RUN_CONFIG is a world of ``tests/worlds/photo_world.py`` whose graph has run under the
default policy (``tests/worlds/photo_world.run_world``) at least as far as the SAE, with the
faithful models named by ``--models`` (default: ``faithful``; e.g. ``faithful exact``, the
preset that redraws each caption's own scene). Its SAE is reused; for each policy (all, or
those of ``--policies``, in that order) the real images and each model's are encoded again (the
same SAE: the concept vocabulary is held fixed so that only the policy changes), the concept
statistics recomputed and the probe run again. Every store a policy writes lies under
``--scratch`` and the run's stores are only read (the probe's images, which no policy changes,
are the run's). Policies:

- ``as_stored``: the files as they lie on disk (real JPEG vs generated PNG);
- ``common q75``: one common JPEG pass at 75, no history (the earlier default);
- ``median match``: one common pass at the real set's median quality, no history;
- ``per-pair history`` (the default): each generated image through its paired real file's
  JPEG encode, then the common q75 pass.

Printed: one row per world and policy (``significant`` flags of each model, of the probe's
history arm, seconds), then the same as JSON; each model's concept statistics and the probe's
table are left in the policy's scratch folder.
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
from blindspot_assets.encoders.images import (  # noqa: E402
    JpegHistory,
    generated_histories,
    policy_of_run,
)
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


def measure(
    config: Path, name: str, fields: dict[str, object], scratch: Path, models: list[str]
) -> dict[str, object]:
    base = load_config(config)
    # the run's real images, models' images, SAE and probe images are read where the run put
    # them; every store this policy writes (features, codes, the probe's) goes under scratch, so
    # the run's own stores are left alone and the benchmark can run beside the graph
    cfg = dataclasses.replace(
        base,
        images=dataclasses.replace(base.images, **fields),
        store_root=scratch,
        stats=dataclasses.replace(base.stats, probe_images=300),
    )
    t0 = time.perf_counter()
    encoder = load_encoder(cfg.encoder, policy_of_run(cfg.images, base.layout.real_images))
    sae = load_sae(base.layout.sae)[0]
    histories = generated_histories(cfg.images, base.layout.real_images)
    sides: list[tuple[str, dict[str, JpegHistory | None] | None]]
    sides = [("real", None), *((m, histories) for m in models)]
    for dataset, given in sides:
        image_dir = cfg.layout.images(dataset)
        extract_features(
            encoder, read_manifest(image_dir), image_dir, cfg.layout.features(dataset),
            histories=given,
        )  # fmt: skip
        encode_features_to_codes(
            sae, cfg.layout.features(dataset), cfg.layout.codes(dataset), cfg.sae.k_max_store
        )
    flags = {}
    for m in models:
        stats = compute_concept_stats(
            cfg.layout.codes("real"), cfg.layout.codes(m), cfg.stats.params
        )
        stats.write_parquet(scratch / f"{m}-stats.parquet")  # to read which concepts moved
        flags[m] = int(stats["significant"].sum())
    # the probe's stores (and its blur arm's reference, the real codes above) under scratch too
    effects = nuisance_effects(cfg, encoder)
    effects.write_parquet(scratch / "nuisance_effects.parquet")
    history = effects.filter(effects["nuisance"] == "history")
    return {
        "world": config.parent.name,
        "policy": name,
        **{f"{m}_significant": n for m, n in flags.items()},
        "probe_history_significant": int(history["significant"].sum()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+", type=Path)
    ap.add_argument("--models", nargs="+", default=["faithful"])
    ap.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/bench-history"))
    args = ap.parse_args()
    rows = []
    for config in args.configs:
        for name in args.policies:
            fields = POLICIES[name]
            scratch = args.scratch / config.parent.name / name.replace(" ", "_")
            scratch.mkdir(parents=True, exist_ok=True)
            rows.append(measure(config, name, fields, scratch, args.models))
            print(rows[-1], flush=True)
    flag_heads = "".join(f" {m + ' flags':>15}" for m in args.models)
    print(f"\n{'world':<16} {'policy':<18}{flag_heads} {'probe flags':>12} {'s':>7}")
    for r in rows:
        flag_cells = "".join(f" {r[m + '_significant']:>15}" for m in args.models)
        print(
            f"{r['world']:<16} {r['policy']:<18}{flag_cells} "
            f"{r['probe_history_significant']:>12} {r['seconds']:>7}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
