"""Where every artifact lives under a run's data root, the arrays of each row store, and where
the patch tokens sit on their token axis."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from blindspot_assets.store.rowstore import ArraySpec, join_location

REAL = "real"  # dataset key of the real images; generated datasets are keyed by model key
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# An archived model version is stored under ``<model>@<version>`` (store/versions.py).
VERSION_SEP = "@"


def check_key(key: str) -> str:
    """Model and dataset keys become folder names and partition keys: keep them plain."""
    if not _KEY_RE.match(key):
        raise ValueError(f"key {key!r} must match {_KEY_RE.pattern} (letters, digits, _ . -)")
    return key


def check_store_key(key: str) -> str:
    """A key a store or table partition may have: a plain key, or ``<model>@<version>`` of an
    archived model version (``@`` never appears in a model key, so the two never collide)."""
    model, sep, version = key.partition(VERSION_SEP)
    check_key(model)
    if sep:
        check_key(version)
    return key


class _UnderRoot:
    """A fixed path under a layout's ``root``, read as an attribute (``layout.sae``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, layout: DataLayout, owner: type | None = None) -> Path:
        return layout.root / self.name


@dataclass(frozen=True)
class DataLayout:
    """``root``: images, the SAE, the DuckDB file of views, the report (a local or shared
    filesystem). ``store_root``: the Zarr row stores and the Parquet tables — the bulk of a
    large run — under ``root`` unless set to another path or an fsspec URL (``s3://bucket/run``).
    """

    root: Path
    store_root: str | Path | None = None

    sae = _UnderRoot("sae")
    sae_replicate = _UnderRoot("sae_replicate")
    """A second SAE trained with another seed, for the stability of blindspots."""
    duckdb = _UnderRoot("blindspots.duckdb")
    report = _UnderRoot("report")
    derived = _UnderRoot("derived")
    """Arrays derived from a row store and cached beside the stores (``store/derived.py``)."""

    def _store(self, *parts: str) -> str | Path:
        return join_location(self.store_root if self.store_root is not None else self.root, *parts)

    @property
    def real_images(self) -> Path:
        return self.root / "images" / REAL

    def generated_images(self, model: str) -> Path:
        return self.root / "images" / "generated" / check_store_key(model)

    def images(self, dataset: str) -> Path:
        return self.real_images if dataset == REAL else self.generated_images(dataset)

    def verification_images(self, model: str) -> Path:
        """New images of ``blindspot_verification``: new seeds for flagged concepts' captions."""
        return self.root / "images" / "verification" / check_store_key(model)

    def verification_store(self, model: str, kind: str) -> str | Path:
        """Features (``kind`` = features) or concept codes (codes) of the verification images."""
        return self._store("verification", f"{check_store_key(model)}-{check_key(kind)}.zarr")

    @property
    def probe_images(self) -> Path:
        """The nuisance probe's image sets (``stats/nuisance.py``), one folder per arm."""
        return self.root / "images" / "probe"

    def probe_store(self, arm: str, side: str, kind: str) -> str | Path:
        """Features or codes (``kind``) of one side (generated, reference) of a probe arm."""
        return self._store("probe", f"{check_key(arm)}-{check_key(side)}-{check_key(kind)}.zarr")

    def features(self, dataset: str) -> str | Path:
        return self._store("features", f"{check_store_key(dataset)}.zarr")

    def codes(self, dataset: str) -> str | Path:
        return self._store("codes", f"{check_store_key(dataset)}.zarr")

    @property
    def tables(self) -> str | Path:
        return self._store("tables")


def feature_arrays(n_tokens: int, d: int, dtype: str = "float16") -> dict[str, ArraySpec]:
    """``tokens``: (N, T, d) ``dtype`` (``encoder.store_dtype``: float16 unless float32 is
    asked) — every token of the encoder's last hidden state."""
    return {"tokens": ArraySpec((n_tokens, d), dtype)}


def code_arrays(n_tokens: int, n_concepts: int, k_max: int, d: int = 0) -> dict[str, ArraySpec]:
    """Concept codes of one dataset.

    - ``xi`` (N, c) float32: per-image concept energy ξ_k = Σ_t z[t, k].
    - ``nfire`` (N, c) uint16: per-image count of tokens with z[t, k] > 0.
    - ``token_idx`` / ``token_val`` (N, T, k_max): the sparse token codes (top k_max active
      concepts of each token, value 0 where fewer are active), for heat maps and audits.
    - with ``d``, the reconstruction of each image's tokens by the dictionary (does the concept
      vocabulary cover this dataset?): ``recon_sse`` (N,) Σ_t ‖x_t − x̂_t‖², ``token_sq`` (N,)
      Σ_t ‖x_t‖², ``token_sum`` (N, d) Σ_t x_t (for the dataset mean behind R²).
    """
    c_chunk = (min(n_concepts, 4096),)
    recon = (
        {
            "recon_sse": ArraySpec((), "float32"),
            "token_sq": ArraySpec((), "float32"),
            "token_sum": ArraySpec((d,), "float32"),
        }
        if d
        else {}
    )
    return {
        **recon,
        "xi": ArraySpec((n_concepts,), "float32", trailing_chunks=c_chunk),
        "nfire": ArraySpec((n_concepts,), "uint16", trailing_chunks=c_chunk),
        "token_idx": ArraySpec((n_tokens, k_max), "int32"),
        "token_val": ArraySpec((n_tokens, k_max), "float16"),
    }


@dataclass(frozen=True)
class TokenLayout:
    """Where the patch tokens are in a row of ``n_tokens`` tokens."""

    n_tokens: int
    n_registers: int
    grid: int

    @property
    def first_patch(self) -> int:
        return 1 + self.n_registers

    @classmethod
    def infer(cls, n_tokens: int, attrs: Mapping[str, object] | None = None) -> TokenLayout:
        """From the features store's attrs when they say how many registers, else from T.

        DINOv2 with registers has 4; a T of the form 1 + 4 + g² is read that way, otherwise
        the largest square grid that fits after the CLS token decides.
        """
        attrs = attrs or {}
        for key in ("n_registers", "num_register_tokens", "registers"):
            value = attrs.get(key)
            if isinstance(value, int) and value >= 0:
                grid = math.isqrt(max(n_tokens - 1 - value, 0))
                if grid * grid == n_tokens - 1 - value:
                    return cls(n_tokens, value, grid)
        for registers in (4, 0):
            rest = n_tokens - 1 - registers
            if rest > 0 and math.isqrt(rest) ** 2 == rest:
                return cls(n_tokens, registers, math.isqrt(rest))
        grid = math.isqrt(max(n_tokens - 1, 0))
        return cls(n_tokens, n_tokens - 1 - grid * grid, grid)
