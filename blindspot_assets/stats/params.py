"""The statistics' parameters: one frozen dataclass, built from the run config's ``stats`` block."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from blindspot_assets.config import StatsSpec


@dataclass(frozen=True)
class BlindspotParams:
    """Everything the blindspot statistics need to know besides the data.

    ``temperature`` and the two δ thresholds are the paper's (T = 0.8, δ < 0.1 suppressed,
    δ > 0.9 exaggerated) and are tied to the released SAE's activation scale. ``alpha`` is the
    false-discovery rate of the Benjamini–Hochberg procedure behind the ``significant`` verdict
    (a minimum-effect test: see ``stats/significance.py``).
    """

    temperature: float = 0.8
    suppressed_below: float = 0.1
    exaggerated_above: float = 0.9
    alpha: float = 0.05
    # The margins of "negligible" (``significance``): a concept is significant when the data
    # show |d_z| > min_effect_size or |relative| > min_relative, beyond chance (BH at alpha).
    # With thousands of pairs, "any change" would flag shifts too small to matter; the relative
    # margin keeps a rare concept that is simply gone (relative = −1, |d_z| small). 0 = unused.
    min_effect_size: float = 0.1
    min_relative: float = 0.25
    n_bootstrap: int = 1000
    n_permutations: int = 1000
    top_images: int = 20
    seed: int = 0
    ci_level: float = 0.95
    # Rows per streamed block: one block of ``xi`` is block_rows × n_concepts float32
    # (512 × 32,000 → 64 MB), held for the real and the generated side at once.
    block_rows: int = 512

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.suppressed_below < self.exaggerated_above < 1:
            raise ValueError("need 0 < suppressed_below < exaggerated_above < 1")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_effect_size < 0 or self.min_relative < 0:
            raise ValueError("min_effect_size and min_relative must be >= 0")
        if not 0 < self.ci_level < 1:
            raise ValueError(f"ci_level must be in (0, 1), got {self.ci_level}")
        if self.n_bootstrap < 0 or self.n_permutations < 0 or self.top_images < 1:
            raise ValueError("n_bootstrap, n_permutations must be >= 0 and top_images >= 1")
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {self.block_rows}")

    @classmethod
    def from_spec(cls, spec: StatsSpec, **overrides: float | int) -> BlindspotParams:
        """The parameters of a run config's ``stats`` block (``overrides`` for the extras)."""
        # Same field names as StatsSpec by design; a field StatsSpec lacks keeps its default,
        # and StatsSpec fields that are not statistics parameters (variant pairs...) are skipped.
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in asdict(spec).items() if k in known}
        return cls(**{**given, **overrides})
