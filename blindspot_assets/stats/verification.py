"""Confirm flagged blindspots by prompting the model again (a stress test, automated).

The paper confirmed blindspots by hand: prompt the model again with captions where the concept
lives and look. Here, for the top ``verify_top`` significant concepts of each kind:

1. **Captions**, chosen so that the choice does not favour either side of the test. A concept's
   top *real* images are real images whose ξ_k is high partly by chance (size, position, what
   else is in the picture); a model that sees only the caption cannot reproduce that part, so
   pairing them with new images shows a "suppression" even for a faithful model (regression to
   the mean: measured on the demo's faithful model, 106 of 128 concepts came out "confirmed
   suppressed" that way). So a suppressed concept takes the captions containing one of its
   caption terms (``concept_labels``: the term most present in the captions of its top real
   images, label rank on ties; ``captions_from`` = ``term:<term>``), drawn in a seeded order
   that ignores ξ — the real images of those captions are a fair sample of them;
   only without a term does it fall back to the captions of its top real images
   (``captions_from`` = ``real``, leaning toward confirming). An exaggerated concept takes the
   captions of its top images in the model's *original* generated set (``captions_from`` = the
   model key): selected on images that neither side of the test reuses (new seeds, real
   images), and where the model puts the concept. ``verify_captions`` captions whose real image
   is usable (valid codes, a caption).
2. **New images.** ``verify_images`` images per caption from the same generator, each with a
   new seed derived from (model, image id, replicate index): reproducible, never the seed of
   the original generated image (``replicate_id``). Written under
   ``images/verification/<model>/`` with a manifest, resumably, through the run's generator.
3. **Encoding.** The same image pipeline (``images:`` policy), encoder, feature-store dtype and
   SAE as every other set: features and codes are row stores of their own.
4. **Test**, paired per caption: R_i = ξ_k of the real image, G_i = the mean of ξ_k over its
   new images. The minimum-effect test and margins of ``significant``
   (``minimum_effect_p_values``), Benjamini–Hochberg over the concepts verified for the model.

Status:

- ``confirmed``: q < α and the mean change has the flagged sign.
- ``not_confirmed``: the new images contradict the flag — a significant change of the other
  sign, or a one-sided test rejects "the energy ratio is beyond the relative margin in the
  flagged direction" (E_G/E_R > ρ for a suppressed concept, E_R/E_G > ρ for an exaggerated one,
  ρ = (1 − min_relative)/(1 + min_relative); BH-adjusted ``q_value_refute`` < α).
- ``inconclusive``: fewer than ``MIN_CAPTIONS`` usable captions, or neither test decides.

A term picked for its association with ξ_k over the real set still carries a little of the
same selection (a winner among terms); ``tests/stats/test_verification.py`` measures what is
left on the faithful model.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from blindspot_assets.config import StatsSpec
from blindspot_assets.encoders.dinov2 import DinoEncoder, extract_features
from blindspot_assets.encoders.images import JpegHistory
from blindspot_assets.generators.base import ImageGenerator
from blindspot_assets.generators.runner import generate_image_set
from blindspot_assets.sae.encode import encode_features_to_codes
from blindspot_assets.sae.model import RelaxedArchetypalSAE
from blindspot_assets.stats.labels import caption_terms
from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.reading import read_rows
from blindspot_assets.stats.scores import benjamini_hochberg
from blindspot_assets.stats.significance import (
    PairedMoments,
    _one_sided_below,  # the relative arm's one-sided test, reused for the refutation
    minimum_effect_p_values,
)
from blindspot_assets.store.images import split_sample_id
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore

MIN_CAPTIONS = 4  # fewer usable captions: inconclusive
STATUSES = ("confirmed", "not_confirmed", "inconclusive", "skipped")
REPLICATE_SEP = ".verify"

VERIFICATION_COLUMNS = (
    "concept", "kind", "flag_rank", "status", "reason", "captions_from", "n_captions",
    "n_images", "energy_real", "energy_gen", "delta_energy", "delta_energy_ci_low",
    "delta_energy_ci_high", "relative", "effect_size", "p_value", "q_value", "p_value_refute",
    "q_value_refute",
)  # fmt: skip

_SCHEMA: dict[str, Any] = {
    "concept": pl.Int32, "kind": pl.String, "flag_rank": pl.Int32, "status": pl.String,
    "reason": pl.String, "captions_from": pl.String, "n_captions": pl.Int32,
    "n_images": pl.Int32, **dict.fromkeys(VERIFICATION_COLUMNS[8:], pl.Float64),
}  # fmt: skip

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class VerificationParams:
    """How much to verify (``stats.verify_*``) and the verdict's settings."""

    top: int = 3
    """The top significant concepts of each kind verified."""
    images: int = 4
    """New images per caption."""
    captions: int = 8
    """Captions per concept."""
    verdict: BlindspotParams = field(default_factory=BlindspotParams)
    """Those of ``significant``: α and the two margins; bootstrap replicates, CI level and seed
    of the interval."""
    min_captions: int = MIN_CAPTIONS
    """Fewer usable captions than this: the concept is not tested."""

    @classmethod
    def from_spec(cls, spec: StatsSpec) -> VerificationParams:
        return cls(spec.verify_top, spec.verify_images, spec.verify_captions, spec.params)

    @property
    def max_generations(self) -> int:
        """The GPU budget per model: every concept of both kinds with distinct captions."""
        return 2 * self.top * self.captions * self.images


def replicate_id(image_id: str, replicate: int) -> str:
    """The id of a verification image: its seed is derived from (model, this id), so it is
    reproducible and differs from the seed of the original image of ``image_id``."""
    return f"{image_id}{REPLICATE_SEP}{replicate}"


def concepts_to_verify(blindspots: pl.DataFrame, top: int) -> pl.DataFrame:
    """The top ``top`` significant concepts of each kind, by the blindspots' rank."""
    if top <= 0 or blindspots.is_empty():
        return blindspots.select("concept", "kind", "rank")[:0]
    return (
        blindspots.filter(pl.col("significant"))
        .sort("rank")
        .group_by("kind", maintain_order=True)
        .head(top)
        .select(pl.col("concept").cast(pl.Int32), "kind", pl.col("rank").cast(pl.Int32))
    )


def _seeded_order(ids: list[str], seed: int, concept: int) -> list[str]:
    """``ids`` in an order that depends on the seed and the concept, never on ξ."""
    key = {i: hashlib.sha256(f"{seed}:{concept}:{i}".encode()).digest() for i in ids}
    return sorted(ids, key=key.__getitem__)


def verification_plan(
    concepts: pl.DataFrame,
    top_images: pl.DataFrame,
    real_manifest: pl.DataFrame,
    usable_real_ids: set[str],
    model_key: str,
    n_captions: int,
    labels: pl.DataFrame | None = None,
    seed: int = 0,
    min_captions: int = MIN_CAPTIONS,
) -> pl.DataFrame:
    """One row per (concept, caption): ``concept``, ``kind``, ``flag_rank``, ``captions_from``,
    ``image_id`` (the real image of the caption), ``caption`` (see the module doc for how the
    captions are chosen).

    ``top_images`` is the ``concept_top_images`` table (``concept``, ``dataset``, ``image_id``,
    ``rank``), ``labels`` the ``concept_labels`` table (``concept``, ``rank``, ``term``); a real
    image is usable when its codes are valid and it has a caption."""
    captions = {
        i: str(c)
        for i, c, s in real_manifest.select("image_id", "caption", "status").iter_rows()
        if s == "ok" and c and str(c).strip() and i in usable_real_ids
    }
    terms_of = {i: caption_terms(c) for i, c in captions.items()}
    rows: list[dict[str, Any]] = []
    for concept, kind, rank in concepts.iter_rows():
        source, picked = _pick_captions(
            concept, kind, top_images, labels, terms_of, model_key, n_captions, seed, min_captions
        )
        ids: list[str | None] = [*picked] or [None]  # no caption: kept, to be inconclusive
        for image_id in ids:
            rows.append(
                {"concept": concept, "kind": kind, "flag_rank": rank, "captions_from": source,
                 "image_id": image_id, "caption": captions.get(image_id or "")}
            )  # fmt: skip
    schema = {"concept": pl.Int32, "kind": pl.String, "flag_rank": pl.Int32,
              "captions_from": pl.String, "image_id": pl.String, "caption": pl.String}  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def _pick_captions(
    concept: int,
    kind: str,
    top_images: pl.DataFrame,
    labels: pl.DataFrame | None,
    terms_of: dict[str, set[str]],
    model_key: str,
    n_captions: int,
    seed: int,
    min_captions: int,
) -> tuple[str, list[str]]:
    """(where the captions come from, the real image ids of the captions)."""

    def top(dataset: str) -> list[str]:
        ids = (
            top_images.filter((pl.col("concept") == concept) & (pl.col("dataset") == dataset))
            .sort("rank")["image_id"]
            .to_list()
        )
        captions = [split_sample_id(i)[0] for i in ids]  # a generated sample's caption
        return [i for i in dict.fromkeys(captions) if i in terms_of][:n_captions]

    if kind == "exaggerated" and (picked := top(model_key)):
        return model_key, picked
    if kind == "suppressed" and labels is not None:
        # the concept's caption term most present among its top real images (a term, never
        # an image, is chosen from them), first by label rank on ties
        shown = [terms_of[i] for i in top(REAL)]
        terms = labels.filter(pl.col("concept") == concept).sort("rank")["term"].to_list()
        by_share = sorted(terms, key=lambda t: -sum(t in s for s in shown))  # stable: rank
        for term in by_share:
            having = [i for i, terms in terms_of.items() if term in terms]
            if len(having) >= min(min_captions, n_captions):
                return f"term:{term}", _seeded_order(having, seed, concept)[:n_captions]
    return REAL, top(REAL)


def replicate_manifest(plan: pl.DataFrame, images: int) -> pl.DataFrame:
    """The generation requests: ``images`` replicates of every distinct caption of the plan,
    as a real-style manifest (``image_id`` = ``replicate_id``, ``caption``, ``status``)."""
    distinct = plan.drop_nulls("image_id").unique("image_id", maintain_order=True)
    rows = [
        {"image_id": replicate_id(i, j), "caption": c, "status": "ok",
         "real_image_id": i, "replicate": j}
        for i, c in distinct.select("image_id", "caption").iter_rows()
        for j in range(images)
    ]  # fmt: skip
    schema = {"image_id": pl.String, "caption": pl.String, "status": pl.String,
              "real_image_id": pl.String, "replicate": pl.Int32}  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def energies_of(codes: str | Path | RowStore, ids: list[str], concepts: list[int]) -> pl.DataFrame:
    """ξ of ``concepts`` for the valid rows among ``ids``: ``image_id``, ``concept``, ``xi``."""
    store = codes if isinstance(codes, RowStore) else RowStore.open(codes)
    index = {i: r for r, i in enumerate(store.image_ids())}
    valid = store.valid()
    rows = np.asarray(sorted({index[i] for i in ids if i in index and valid[index[i]]}), np.int64)
    xi = read_rows(store.array("xi"), rows)[:, concepts] if concepts else np.zeros((rows.size, 0))
    all_ids = store.image_ids()
    return pl.DataFrame(
        {
            "image_id": np.repeat([all_ids[r] for r in rows], len(concepts)).tolist(),
            "concept": np.tile(np.asarray(concepts, np.int32), rows.size),
            "xi": xi.astype(np.float64).reshape(-1),
        },
        schema={"image_id": pl.String, "concept": pl.Int32, "xi": pl.Float64},
    )


def _bootstrap_ci(d: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    if d.size < 2 or n_boot < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def verify_concepts(
    plan: pl.DataFrame,
    real_energy: pl.DataFrame,
    gen_energy: pl.DataFrame,
    params: VerificationParams,
) -> pl.DataFrame:
    """The verdict per planned concept (columns ``VERIFICATION_COLUMNS``).

    ``real_energy``: ``image_id``, ``concept``, ``xi`` of the real images; ``gen_energy``: the
    same for the new images, with ``real_image_id`` naming the caption's real image. A caption
    counts when its real image and at least one new image have codes; G_i is the mean over its
    new images."""
    gen_mean = gen_energy.group_by("real_image_id", "concept").agg(
        pl.col("xi").mean().alias("xi_gen"), pl.len().alias("n_images")
    )
    verdict = params.verdict
    rho = (1.0 - verdict.min_relative) / (1.0 + verdict.min_relative)
    out: list[dict[str, Any]] = []
    for (concept, kind, flag_rank, source), rows in plan.group_by(
        "concept", "kind", "flag_rank", "captions_from", maintain_order=True
    ):
        paired = (
            rows.drop_nulls("image_id")
            .join(real_energy, on=["image_id", "concept"])
            .join(
                gen_mean,
                left_on=["image_id", "concept"],
                right_on=["real_image_id", "concept"],
            )
            .sort("image_id")  # a join keeps no order; the bootstrap must see one
        )
        r = paired["xi"].to_numpy().astype(np.float64)
        g = paired["xi_gen"].to_numpy().astype(np.float64)
        row: dict[str, Any] = {
            "concept": concept, "kind": kind, "flag_rank": flag_rank, "captions_from": source,
            "n_captions": paired.height, "n_images": int(paired["n_images"].sum()),
        }  # fmt: skip
        e_real, e_gen = (float(r.mean()), float(g.mean())) if r.size else (np.nan, np.nan)
        total = e_real + e_gen
        d = g - r
        sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
        mean_d = float(d.mean()) if d.size else float("nan")
        low, high = _bootstrap_ci(d, verdict.n_bootstrap, verdict.ci_level, verdict.seed)
        moments = PairedMoments.zeros(1).add(r[:, None], g[:, None])
        margins = (verdict.min_effect_size, verdict.min_relative)
        p = float(minimum_effect_p_values(moments, *margins)[0])
        # refute "the flagged change is beyond the relative margin": suppressed, E_G ≤ ρ E_R
        # (reject when mean(ρR − G) < 0); exaggerated, E_R ≤ ρ E_G (mean(ρG − R) < 0)
        a, b = (-1.0, rho) if kind == "suppressed" else (rho, -1.0)
        refute = (
            float(_one_sided_below(*moments.combination(a, b), moments.n)[0])
            if moments.n >= 2 and verdict.min_relative > 0
            else 1.0
        )
        row.update(
            energy_real=e_real,
            energy_gen=e_gen,
            delta_energy=mean_d,
            delta_energy_ci_low=low,
            delta_energy_ci_high=high,
            relative=(e_gen - e_real) / total if total > 0 else 0.0,
            effect_size=mean_d / sd
            if sd > 0
            else (0.0 if mean_d == 0 else np.sign(mean_d) * np.inf),
            p_value=p,
            p_value_refute=refute,
        )
        out.append(row)
    df = pl.DataFrame(out, schema={k: v for k, v in _SCHEMA.items() if k not in
                                   ("status", "reason", "q_value", "q_value_refute")})  # fmt: skip
    return _verdicts(df, params)


def _verdicts(df: pl.DataFrame, params: VerificationParams) -> pl.DataFrame:
    """BH over the testable concepts, then the status and its reason in words."""
    testable = (df["n_captions"] >= params.min_captions).to_numpy()
    q = np.full(df.height, np.nan)
    q_refute = np.full(df.height, np.nan)
    if testable.any():
        q[testable] = benjamini_hochberg(df["p_value"].to_numpy()[testable])
        q_refute[testable] = benjamini_hochberg(df["p_value_refute"].to_numpy()[testable])
    statuses, reasons = [], []
    alpha, margin = params.verdict.alpha, params.verdict.min_relative
    for i, row in enumerate(df.iter_rows(named=True)):
        sign = -1.0 if row["kind"] == "suppressed" else 1.0
        agrees = np.sign(row["delta_energy"]) == sign
        if not testable[i]:
            status = "inconclusive"
            reason = f"{row['n_captions']} usable caption(s), fewer than {params.min_captions}"
        elif q[i] < alpha and agrees:
            status, reason = "confirmed", f"{row['kind']} again in the new images (q < {alpha})"
        elif q[i] < alpha:
            status, reason = "not_confirmed", "a significant change of the other sign"
        elif q_refute[i] < alpha:
            status = "not_confirmed"
            reason = f"energy ratio within the ±{margin} relative margin (q < {alpha})"
        else:
            status = "inconclusive"
            reason = f"neither confirmed nor refuted at α = {alpha} on {row['n_captions']} captions"
        statuses.append(status)
        reasons.append(reason)
    return df.with_columns(
        status=pl.Series(statuses, dtype=pl.String),
        reason=pl.Series(reasons, dtype=pl.String),
        q_value=pl.Series(q),
        q_value_refute=pl.Series(q_refute),
    ).select(VERIFICATION_COLUMNS)


def skipped_rows(concepts: pl.DataFrame, reason: str) -> pl.DataFrame:
    """Rows saying why a model is not verified: one per concept it would have verified, or one
    row without a concept when it has none."""
    base = concepts.rename({"rank": "flag_rank"}) if concepts.height else None
    n = concepts.height or 1
    df = pl.DataFrame({c: [None] * n for c in VERIFICATION_COLUMNS}, schema=_SCHEMA)
    if base is not None:
        df = df.with_columns(base["concept"], base["kind"], base["flag_rank"])
    return df.with_columns(
        status=pl.lit("skipped"), reason=pl.lit(reason), n_captions=pl.lit(0, pl.Int32),
        n_images=pl.lit(0, pl.Int32),
    ).select(VERIFICATION_COLUMNS)  # fmt: skip


def empty_table() -> pl.DataFrame:
    return pl.DataFrame(schema=_SCHEMA).select(VERIFICATION_COLUMNS)


@dataclass(frozen=True)
class VerificationRun:
    table: pl.DataFrame
    n_concepts: int
    n_requested: int  # new images asked for
    n_generated: int  # made in this call (the rest reused from an earlier run, or failed)
    n_failed: int
    seconds: float


def run_verification(
    *,
    model_key: str,
    blindspots: pl.DataFrame,
    top_images: pl.DataFrame,
    labels: pl.DataFrame | None,
    real_manifest: pl.DataFrame,
    real_codes: str | Path,
    generator: ImageGenerator,
    encoder: DinoEncoder,
    sae: RelaxedArchetypalSAE,
    k_max: int,
    image_dir: Path,
    features_path: str | Path,
    codes_path: str | Path,
    params: VerificationParams,
    base_seed: int = 0,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
    real_histories: Mapping[str, JpegHistory | None] | None = None,
) -> VerificationRun:
    """Generate, encode and test (module docstring); resumes: images, features and codes
    already made are kept. ``real_histories``: each real image's JPEG history, given to the
    new images of its caption as to the generated set's (``encoders/images.py``)."""
    t0 = time.perf_counter()
    concepts = concepts_to_verify(blindspots, params.top)
    real_store = RowStore.open(real_codes)
    usable = {i for i, v in zip(real_store.image_ids(), real_store.valid(), strict=True) if v}
    plan = verification_plan(
        concepts, top_images, real_manifest, usable, model_key, params.captions, labels,
        params.verdict.seed, params.min_captions,
    )  # fmt: skip
    requests = replicate_manifest(plan, params.images)
    if requests.is_empty():
        table = verify_concepts(plan, _no_energy(), _no_energy(gen=True), params)
        return VerificationRun(table, concepts.height, 0, 0, 0, time.perf_counter() - t0)
    manifest, summary = generate_image_set(
        generator, model_key, requests, image_dir, batch_size, base_seed, progress
    )
    histories = None
    if real_histories is not None:
        pairs = requests.select("image_id", "real_image_id").iter_rows()
        histories = {new: real_histories.get(real) for new, real in pairs}
    extract_features(encoder, manifest, image_dir, features_path, histories=histories)
    encode_features_to_codes(sae, features_path, codes_path, k_max, device=_device(sae))
    wanted = plan["concept"].unique().sort().to_list()
    real_energy = energies_of(real_store, plan["image_id"].drop_nulls().to_list(), wanted)
    gen_energy = energies_of(codes_path, requests["image_id"].to_list(), wanted).join(
        requests.select("image_id", "real_image_id"), on="image_id"
    )
    table = verify_concepts(plan, real_energy, gen_energy, params)
    return VerificationRun(
        table,
        concepts.height,
        requests.height,
        summary.n_generated,
        summary.n_failed,
        time.perf_counter() - t0,
    )


def _no_energy(gen: bool = False) -> pl.DataFrame:
    schema = {"image_id": pl.String, "concept": pl.Int32, "xi": pl.Float64}
    return pl.DataFrame(schema={**schema, "real_image_id": pl.String} if gen else schema)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
