"""A run's result tables: each per-model table computed over the run's layout, stamped with
lineage and written as one Parquet partition per model; the cross-model tables of
``model_comparison``; the planted-truth scores. What the analysis assets call (``defs/``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from blindspot_assets.config import BLINDSPOT_KINDS, RunConfig
from blindspot_assets.devices import choose_device
from blindspot_assets.encoders.dinov2 import DinoEncoder, extract_features
from blindspot_assets.encoders.images import JpegHistory, generated_histories
from blindspot_assets.generators.registry import base_seed, batch_size, build_generator
from blindspot_assets.sae.build import sae_version
from blindspot_assets.sae.checkpoint import HEADER_FILE, load_sae
from blindspot_assets.sae.encode import encode_features_to_codes
from blindspot_assets.sae.model import RelaxedArchetypalSAE
from blindspot_assets.stats.changes import blindspot_changes
from blindspot_assets.stats.concepts import compute_concept_stats, flag_blindspots
from blindspot_assets.stats.distribution import DistributionParams, store_change, store_metrics
from blindspot_assets.stats.nuisance import (
    effects_frame,
    mark_within_nuisance,
    probe_ids,
    write_probe_images,
)
from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.planted import planted_summary_frame, score_planted
from blindspot_assets.stats.reconstruction import reconstruction_quality
from blindspot_assets.stats.replication import replication, without_replication
from blindspot_assets.stats.specific import specific_changes, with_specific
from blindspot_assets.stats.summaries import (
    compare_variants,
    frequency_vs_relative,
    model_summaries,
    relative_correlations,
)
from blindspot_assets.stats.top_images import top_images
from blindspot_assets.stats.verification import (
    VerificationParams,
    concepts_to_verify,
    run_verification,
    skipped_rows,
)
from blindspot_assets.store.images import model_version, read_lineage, read_manifest
from blindspot_assets.store.layout import REAL, DataLayout
from blindspot_assets.store.rowstore import store_exists
from blindspot_assets.store.schema import stamp
from blindspot_assets.store.tables import read_table, refresh_views, write_table_partition
from blindspot_assets.store.versions import locate, version_comparisons


def lineage_columns(
    cfg: RunConfig, model_key: str, run_id: str, with_sae: bool = True
) -> dict[str, str]:
    """Columns stamped on every row so it traces back to the exact model and SAE version."""
    columns = {
        "model_key": model_key,
        "model_version": model_version(read_lineage(cfg.layout.generated_images(model_key))),
        "run_id": run_id,
    }
    if with_sae:
        columns["sae_version"] = sae_version(cfg.layout.sae)
    return columns


def with_sae_version(cfg: RunConfig, df: pl.DataFrame) -> pl.DataFrame:
    """A run-level table stamped with the version of the SAE it was computed with."""
    return df.with_columns(pl.lit(sae_version(cfg.layout.sae)).alias("sae_version"))


def write_run_table(cfg: RunConfig, table: str, partition: str, df: pl.DataFrame) -> None:
    """One partition of a table, and the DuckDB views refreshed."""
    write_table_partition(cfg.layout.tables, table, partition, df)
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)


def write_per_model(
    cfg: RunConfig,
    table: str,
    model_keys: Iterable[str],
    run_id: str,
    compute: Callable[[str], pl.DataFrame],
    with_sae: bool = True,
) -> dict[str, pl.DataFrame]:
    """For each model: compute its rows, stamp lineage, write its partition file."""
    out = {}
    for model_key in model_keys:
        df = stamp(compute(model_key), lineage_columns(cfg, model_key, run_id, with_sae))
        write_table_partition(cfg.layout.tables, table, model_key, df)
        out[model_key] = df
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    return out


def available(cfg: RunConfig, table: str) -> dict[str, pl.DataFrame]:
    """Every model's partition of ``table`` written so far."""
    out = {}
    for model_key in cfg.models:
        try:
            out[model_key] = read_table(cfg.layout.tables, table, model_key)
        except FileNotFoundError:
            continue
    return out


def flagged_with_replication(
    cfg: RunConfig, model_key: str, params: BlindspotParams
) -> pl.DataFrame:
    """The model's flagged concepts; with a replicate SAE (``sae.replicate_seed``), which of them
    replicate in it (null columns without one)."""
    flagged = flag_blindspots(read_table(cfg.layout.tables, "concept_stats", model_key), params)
    flagged = with_specific(flagged, specific_of(cfg, model_key, params), params.alpha)
    flagged = mark_within_nuisance(flagged, nuisance_effects_of(cfg))
    if not (cfg.layout.sae_replicate / HEADER_FILE).exists():
        return without_replication(flagged)
    model_a, _ = load_sae(cfg.layout.sae)
    model_b, _ = load_sae(cfg.layout.sae_replicate)
    return replication(
        flagged, model_a, model_b, cfg.layout.features(REAL), cfg.layout.features(model_key), params
    )


def consensus_models(cfg: RunConfig, model_key: str) -> list[str]:
    """The models whose consensus ``model_key`` is tested against (``stats/specific.py``):
    every other model of the run that is not a null control and has codes."""
    return [
        m
        for m in cfg.models
        if m != model_key and not cfg.model(m).control and store_exists(cfg.layout.codes(m))
    ]


def specific_of(cfg: RunConfig, model_key: str, params: BlindspotParams) -> pl.DataFrame | None:
    """The model's changes against the other models' consensus; None for a control or a run
    with no other model."""
    others = consensus_models(cfg, model_key)
    if cfg.model(model_key).control or not others:
        return None
    return specific_changes(
        cfg.layout.codes(model_key),
        [cfg.layout.codes(m) for m in others],
        params.min_effect_size,
        params.min_relative,
        params.block_rows,
    )


def top_images_by_dataset(cfg: RunConfig) -> tuple[dict[str, pl.DataFrame], list[str]]:
    """Each concept's top images in the real set and in every model's set with codes (by
    ``stats.top_images_by``); and the datasets skipped for want of codes."""
    tables: dict[str, pl.DataFrame] = {}
    skipped = []
    for dataset in [REAL, *cfg.models]:
        path = cfg.layout.codes(dataset)
        if not store_exists(path):
            skipped.append(dataset)
            continue
        top = top_images(path, cfg.stats.params.top_images, by=cfg.stats.top_images_by)
        tables[dataset] = top.with_columns(pl.lit(dataset).alias("dataset"))
    return tables, skipped


@dataclass
class ComparisonTables:
    """The cross-model tables (name → frame) and the models with a vocabulary gap."""

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    vocabulary_gaps: list[str] = field(default_factory=list)


def model_comparison_tables(cfg: RunConfig, params: BlindspotParams) -> ComparisonTables:
    """Across the models with results: ``model_summaries`` (with each model's distribution
    metrics, ``distribution_frame``), ``frequency_vs_relative``, ``model_correlations`` (two
    models or more), ``variant_comparisons`` (``stats.variant_pairs``, with the pair's
    distribution metrics) and ``planted_scores`` (worlds with a planted truth); each only where
    it has input."""
    out = ComparisonTables()
    stats_by_model = available(cfg, "concept_stats")
    if stats_by_model:
        recon = {
            dataset: reconstruction_quality(cfg.layout.codes(dataset))
            for dataset in [REAL, *stats_by_model]
            if store_exists(cfg.layout.codes(dataset))
        }
        summaries = model_summaries(stats_by_model, params, cfg.controls, recon)
        summaries = summaries.join(distribution_frame(cfg, list(stats_by_model)), "model", "left")
        out.vocabulary_gaps = summaries.filter(pl.col("vocabulary_gap"))["model"].to_list()
        out.tables["model_summaries"] = summaries
        out.tables["frequency_vs_relative"] = pl.concat(
            [
                frequency_vs_relative(df, params).with_columns(pl.lit(m).alias("model_key"))
                for m, df in stats_by_model.items()
            ],
            how="diagonal_relaxed",
        )
    if len(stats_by_model) > 1:
        out.tables["model_correlations"] = relative_correlations(stats_by_model)
    deltas = available(cfg, "datapoint_deltas")
    variants = [
        compare_variants(deltas[a], deltas[b], params, a, b).with_columns(
            **{name: pl.lit(v) for name, v in pair_distribution(cfg, a, b).items()}
        )
        for a, b in cfg.stats.variant_pairs
        if a in deltas and b in deltas
    ]
    if variants:
        out.tables["variant_comparisons"] = pl.concat(variants, how="diagonal_relaxed")
    planted = planted_scores(cfg)
    if planted is not None:
        out.tables["planted_scores"] = planted
    return out


def distribution_params(cfg: RunConfig) -> DistributionParams:
    """The distribution metrics' parameters from the ``stats`` block."""
    spec = cfg.stats
    return DistributionParams(
        k=spec.prdc_k,
        n_bootstrap=spec.distribution_bootstrap,
        max_samples=spec.distribution_max_samples,
        seed=spec.params.seed,
        ci_level=spec.params.ci_level,
        block_rows=spec.params.block_rows,
    )


def distribution_frame(cfg: RunConfig, models: Iterable[str]) -> pl.DataFrame:
    """Per model with features: ``model`` and its distribution metrics against the real set
    on the CLS token (``stats/distribution.py``; the real side computed once, cached under
    ``DataLayout.derived``); no rows without real features."""
    real = cfg.layout.features(REAL)
    params = distribution_params(cfg)
    rows = [
        {"model": m, **store_metrics(real, cfg.layout.features(m), params, cfg.layout.derived)}
        for m in models
        if store_exists(real) and store_exists(cfg.layout.features(m))
    ]
    return pl.DataFrame(rows) if rows else pl.DataFrame(schema={"model": pl.String})


def pair_distribution(
    cfg: RunConfig, base: str, candidate: str, base_layout: DataLayout | None = None
) -> dict[str, Any]:
    """The distribution metrics of a base and a candidate (``base_*``, ``candidate_*``, the
    change ``*_change`` with its paired interval) over the captions valid in the real, base and
    candidate feature stores; {} while a store is missing."""
    real = cfg.layout.features(REAL)
    base_store = (base_layout or cfg.layout).features(base)
    cand = cfg.layout.features(candidate)
    if not all(store_exists(s) for s in (real, base_store, cand)):
        return {}
    return store_change(real, base_store, cand, distribution_params(cfg), cfg.layout.derived)


def planted_scores(cfg: RunConfig) -> pl.DataFrame | None:
    """Recall / precision@k of planted blindspots, for models whose lineage records a truth."""
    try:
        top = read_table(cfg.layout.tables, "concept_top_images", REAL)
    except FileNotFoundError:
        return None
    manifest = read_manifest(cfg.layout.real_images)
    frames = []
    for model_key, flagged in available(cfg, "blindspots").items():
        planted = planted_truth(cfg.layout.generated_images(model_key))
        if planted is None:
            continue
        summary, _ = score_planted(flagged, top, manifest, planted)
        frames.append(planted_summary_frame(summary, model_key))
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def planted_truth(set_dir: Path) -> dict[str, list[str]] | None:
    """The blindspots planted in a generated set (its lineage's ``planted_truth``), or None
    when it records none or plants nothing (a control: nothing to score)."""
    truth = read_lineage(set_dir).get("planted_truth")
    if not isinstance(truth, dict):
        return None
    planted = {k: list(v) for k, v in truth.items() if k in BLINDSPOT_KINDS}
    return planted if any(planted.values()) else None


def comparisons(cfg: RunConfig) -> list[tuple[str, str]]:
    """``stats.compare``, then each model against the version it replaced."""
    return [*cfg.stats.compare, *version_comparisons(cfg.layout, cfg.models)]


def comparison_changes(
    cfg: RunConfig, base: str, candidate: str, key: str, run_id: str, params: BlindspotParams
) -> pl.DataFrame:
    """The ``blindspot_changes`` rows of comparison ``key`` (base → candidate), with the two
    sides' distribution metrics and their change (``pair_distribution``, the same on every
    row), stamped with both sides' model versions and the candidate's lineage.
    FileNotFoundError (naming what to materialise) while either side has no ``concept_stats``."""
    base_layout = locate(cfg.layout, base)  # a current model or an archived version
    try:
        base_stats = read_table(base_layout.tables, "concept_stats", base)
        cand_stats = read_table(cfg.layout.tables, "concept_stats", candidate)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}: materialise concept_stats of both models first") from exc
    df = blindspot_changes(
        cfg.layout.codes(REAL),
        base_layout.codes(base),
        cfg.layout.codes(candidate),
        base_stats,
        cand_stats,
        params,
    )
    distribution = pair_distribution(cfg, base, candidate, base_layout)
    sides = {
        "comparison": key,
        "base": base,
        "candidate": candidate,
        "base_model_version": str(base_stats["model_version"][0]),
        "candidate_model_version": str(cand_stats["model_version"][0]),
    }
    df = df.with_columns(**{name: pl.lit(v) for name, v in distribution.items()})
    return stamp(df, {**sides, **lineage_columns(cfg, candidate, run_id)})


def verification_skip_reason(cfg: RunConfig, model_key: str) -> str | None:
    """Why a model is not prompted again, or None."""
    spec = cfg.model(model_key)
    if spec.family == "pregenerated":
        return "pre-generated set: there is no generator to prompt again"
    if spec.control:
        return "null control: it has no blindspot to confirm by construction"
    return None


def top_images_of(cfg: RunConfig, model_key: str) -> pl.DataFrame:
    """``concept_top_images`` of the real set and the model; computed from the codes (the same
    function) where the table has no partition yet (a model_job backfill before report_job)."""
    frames = []
    for dataset in (REAL, model_key):
        try:
            frames.append(read_table(cfg.layout.tables, "concept_top_images", dataset))
        except FileNotFoundError:
            top = top_images(
                cfg.layout.codes(dataset), cfg.stats.params.top_images, cfg.stats.top_images_by
            )
            frames.append(top.with_columns(pl.lit(dataset).alias("dataset")))
    return pl.concat(frames, how="diagonal_relaxed")


def verify_model(
    cfg: RunConfig,
    model_key: str,
    encoder: Callable[[], DinoEncoder],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The ``blindspot_verification`` rows of one model (``stats/verification.py``) and what to
    report; a pre-generated set or a null control gets its flagged concepts marked skipped.
    ``encoder`` loads the run's encoder (only when the model is prompted again)."""
    params = VerificationParams.from_spec(cfg.stats)
    flagged = read_table(cfg.layout.tables, "blindspots", model_key)
    reason = verification_skip_reason(cfg, model_key)
    if reason is not None:
        return skipped_rows(concepts_to_verify(flagged, params.top), reason), {"skipped": reason}
    spec = cfg.model(model_key)
    try:
        labels: pl.DataFrame | None = read_table(cfg.layout.tables, "concept_labels")
    except FileNotFoundError:
        labels = None
    run = run_verification(
        model_key=model_key,
        blindspots=flagged,
        top_images=top_images_of(cfg, model_key),
        labels=labels,
        real_manifest=read_manifest(cfg.layout.real_images),
        real_codes=cfg.layout.codes(REAL),
        generator=build_generator(spec),
        encoder=encoder(),
        sae=load_sae(cfg.layout.sae, device=choose_device("auto"))[0],
        k_max=cfg.sae.k_max_store,
        image_dir=cfg.layout.verification_images(model_key),
        features_path=cfg.layout.verification_store(model_key, "features"),
        codes_path=cfg.layout.verification_store(model_key, "codes"),
        params=params,
        base_seed=base_seed(spec, cfg.seed),
        batch_size=batch_size(spec),
        progress=progress,
        real_histories=generated_histories(cfg.images, cfg.layout.real_images),
    )
    meta = {
        "n_concepts": run.n_concepts,
        "n_images_requested": run.n_requested,
        "n_generated_now": run.n_generated,
        "n_failed": run.n_failed,
        "seconds": round(run.seconds, 2),
        **dict(run.table.group_by("status").len().iter_rows()),
    }
    return run.table, meta


def column_mean(df: pl.DataFrame, column: str) -> float:
    """The mean of a column, 0.0 when it has none (no rows, all null)."""
    value = df[column].mean()
    return float(value) if isinstance(value, int | float) else 0.0


def strongest_partners(cooccurrence: pl.DataFrame) -> pl.DataFrame:
    """Each concept's first partner in a ``concept_cooccurrence`` table, strongest first."""
    return cooccurrence.filter(pl.col("rank") == 1).sort("cosine", descending=True)


def flag_counts(flagged: pl.DataFrame) -> dict[str, int]:
    """How many concepts a ``blindspots`` partition flags, in all and per kind."""
    return {"n_flagged": flagged.height, **dict(flagged.group_by("kind").len().iter_rows())}


def top_flags(flagged: pl.DataFrame) -> pl.DataFrame:
    """A ``blindspots`` partition's flags in rank order, with the columns read first."""
    return flagged.sort("rank").select("concept", "kind", "delta", "delta_energy", "q_value")


def nuisance_effects(cfg: RunConfig, encoder: DinoEncoder) -> pl.DataFrame:
    """The nuisance probe of the run (``stats/nuisance.py``): both arms' images written, then
    encoded, coded and tested through the run's own pipeline; resumes like the stages."""
    spec = cfg.stats
    real_dir = cfg.layout.real_images
    ids = probe_ids(real_dir, spec.probe_images, cfg.seed)
    sets = write_probe_images(
        real_dir, cfg.layout.probe_images, ids, spec.probe_scale, spec.probe_blur
    )
    sae_model = load_sae(cfg.layout.sae, device=choose_device("auto"))[0]
    device = next(sae_model.parameters()).device
    frames = []
    for arm, found in sets.items():
        reference_codes = cfg.layout.codes(REAL)
        reference_dir = real_dir
        if found.reference is not None:
            reference_dir = found.reference
            reference_codes = _probe_codes(
                cfg, encoder, sae_model, device, arm, "reference", found.reference, None
            )
        histories = generated_histories(cfg.images, reference_dir)
        gen_codes = _probe_codes(
            cfg, encoder, sae_model, device, arm, "generated", found.generated, histories
        )
        stats = compute_concept_stats(reference_codes, gen_codes, cfg.stats.params)
        frames.append(effects_frame(arm, stats))
    return pl.concat(frames)


def _probe_codes(
    cfg: RunConfig,
    encoder: DinoEncoder,
    sae_model: RelaxedArchetypalSAE,
    device: torch.device,
    arm: str,
    side: str,
    image_dir: Path,
    histories: Mapping[str, JpegHistory | None] | None,
) -> str | Path:
    features = cfg.layout.probe_store(arm, side, "features")
    codes = cfg.layout.probe_store(arm, side, "codes")
    extract_features(encoder, read_manifest(image_dir), image_dir, features, histories=histories)
    encode_features_to_codes(sae_model, features, codes, cfg.sae.k_max_store, device=device)
    return codes


def nuisance_effects_of(cfg: RunConfig) -> pl.DataFrame | None:
    """The run's ``nuisance_effects`` table, None when no probe ran."""
    try:
        return read_table(cfg.layout.tables, "nuisance_effects")
    except FileNotFoundError:
        return None
