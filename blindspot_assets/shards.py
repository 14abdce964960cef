"""Shards of a per-image stage: which rows a worker fills, what it reports, and how the reports
of one dataset's shards add up.

A per-image stage (generation, features, codes) splits each dataset's rows into shards that fill
one store at once (``defs/sharding.py`` runs them as Dagster steps). Each shard returns a frozen
summary; ``merge(parts)`` adds the summaries of one dataset's shards up: counts and count tables
add, ``seconds`` is the compute time of all shards (GPU-seconds), rates are recomputed from the
sums, and what every shard shares (lineage, fingerprints) is the first shard's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from blindspot_assets.encoders.dinov2 import ExtractionSummary
from blindspot_assets.generators.runner import GenerationSummary
from blindspot_assets.store.rowstore import RowStore

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of one dataset (REAL or a model key): shard ``index`` of ``of``."""

    dataset: str
    start: int
    stop: int
    index: int
    of: int

    @property
    def rows(self) -> tuple[int, int]:
        return (self.start, self.stop)


class ShardSummary(Protocol):
    """What one shard reports; the summaries of a dataset's shards merge into one."""

    @classmethod
    def merge(cls, parts: Sequence[Self]) -> Self: ...


def add_counts(tables: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Count tables added key by key."""
    out: dict[str, int] = {}
    for table in tables:
        for key, n in table.items():
            out[key] = out.get(key, 0) + int(n)
    return out


_S = TypeVar("_S", bound="DataclassInstance")


def _merge(cls: type[_S], parts: Sequence[_S], shared: tuple[str, ...]) -> _S:
    """Shard summaries added up: numbers summed, count tables added key by key, the ``shared``
    fields (the same on every shard) taken from the first."""
    if not parts:
        raise ValueError("no shard summary to merge")
    values: dict[str, Any] = {}
    for f in fields(cls):
        got = [getattr(p, f.name) for p in parts]
        if f.name in shared:
            values[f.name] = got[0]
        elif isinstance(got[0], Mapping):
            values[f.name] = add_counts(got)
        else:
            values[f.name] = type(got[0])(sum(got))
    return cls(**values)


@dataclass(frozen=True)
class FeatureShards:
    """Feature extraction of one or several shards of a dataset (``extract_features``)."""

    n_rows: int
    n_valid: int
    n_computed: int
    n_invalid_by_status: dict[str, int]
    seconds: float
    lineage: dict[str, Any]  # the encoder's, the same on every shard

    @classmethod
    def of(cls, summary: ExtractionSummary, lineage: dict[str, Any]) -> FeatureShards:
        fields = {k: v for k, v in asdict(summary).items() if k != "images_per_s"}
        return cls(**fields, lineage=lineage)

    @classmethod
    def merge(cls, parts: Sequence[FeatureShards]) -> FeatureShards:
        return _merge(cls, parts, shared=("lineage",))

    @property
    def images_per_s(self) -> float:
        return self.n_computed / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class CodeShards:
    """SAE encoding of one or several shards of a dataset (``encode_features_to_codes``)."""

    rows: int
    valid_rows: int
    rows_computed: int
    tokens_encoded: int
    l0_sum: int
    tokens_over_k_max: int
    seconds: float
    sae_fingerprint: str
    sae_data_version: str | None

    @classmethod
    def of(cls, summary: Mapping[str, Any], sae_data_version: str | None) -> CodeShards:
        return cls(
            rows=int(summary["rows"]),
            valid_rows=int(summary["valid_rows"]),
            rows_computed=int(summary["rows_computed"]),
            tokens_encoded=int(summary["tokens_encoded"]),
            l0_sum=int(summary["l0_sum"]),
            tokens_over_k_max=int(summary["tokens_over_k_max"]),
            seconds=float(summary["seconds"]),
            sae_fingerprint=str(summary["sae_fingerprint"]),
            sae_data_version=sae_data_version,
        )

    @classmethod
    def merge(cls, parts: Sequence[CodeShards]) -> CodeShards:
        return _merge(cls, parts, shared=("sae_fingerprint", "sae_data_version"))

    @property
    def mean_l0(self) -> float:
        return self.l0_sum / self.tokens_encoded if self.tokens_encoded else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_encoded / max(self.seconds, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_l0": self.mean_l0, "tokens_per_s": self.tokens_per_s}


@dataclass(frozen=True)
class GenerationShards:
    """Image generation of one or several shards of a model's set (``generate_image_set``)."""

    n_images: int
    n_generated: int
    n_reused: int
    n_failed: int
    failures_by_reason: dict[str, int]
    seconds: float
    lineage: dict[str, Any]  # the generator's, the same on every shard

    @classmethod
    def of(cls, summary: GenerationSummary, lineage: dict[str, Any]) -> GenerationShards:
        return cls(
            n_images=summary.n_requested,
            n_generated=summary.n_generated,
            n_reused=summary.n_reused,
            n_failed=summary.n_failed,
            failures_by_reason=dict(summary.failures_by_reason),
            seconds=summary.seconds,
            lineage=lineage,
        )

    @classmethod
    def merge(cls, parts: Sequence[GenerationShards]) -> GenerationShards:
        return _merge(cls, parts, shared=("lineage",))

    def counts(self) -> dict[str, int]:
        return {
            "n_images": self.n_images,
            "n_generated": self.n_generated,
            "n_reused": self.n_reused,
            "n_failed": self.n_failed,
        }


def finish_sharded_store(path: str | Path, lineage: Mapping[str, Any] | None = None) -> None:
    """After every shard ran: the store must be complete; record who made it and finish it
    (a staged rebuild replaces the previous store here, once)."""
    store = RowStore.open_being_written(path)
    if not store.is_complete():
        pending = store.pending_blocks()
        raise RuntimeError(
            f"{path}: {sum(b - a for a, b in pending)} rows still pending after every shard ran "
            f"(first {pending[:3]}); re-materialise to resume them"
        )
    store.finish(**(lineage or {}), completed_at=time.time())
