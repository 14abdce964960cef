"""The statistics' parameters: one frozen dataclass, nested in the run config's ``stats`` block
(``config.StatsSpec.params``) whose YAML keys are its field names."""

from __future__ import annotations

from dataclasses import dataclass

from blindspot_assets.config_fields import ConfigError, check_fields, check_ints


@dataclass(frozen=True)
class BlindspotParams:
    """Everything the blindspot statistics need to know besides the data.

    ``temperature`` and the two δ thresholds are the paper's (T = 0.8, δ < 0.1 suppressed,
    δ > 0.9 exaggerated) and are tied to the released SAE's activation scale. ``alpha`` is the
    false-discovery rate of the Benjamini–Hochberg procedure behind the ``significant`` verdict
    (a minimum-effect test: see ``stats/significance.py``).
    """

    temperature: float = 0.8
    """T of the softmax-like energy share δ (docs/method.md §6); > 0."""
    suppressed_below: float = 0.1
    """δ below this: the concept is suppressed by the model."""
    exaggerated_above: float = 0.9
    """δ above this: the concept is exaggerated by the model."""
    alpha: float = 0.05
    """False-discovery rate of Benjamini–Hochberg across concepts, in (0, 1)."""
    min_effect_size: float = 0.1
    """Margin of a negligible change on |d_z| (``significance``): a concept is significant when
    the data show |d_z| > min_effect_size or |relative| > min_relative beyond chance. With
    thousands of pairs "any change" would flag shifts too small to matter. 0: unused."""
    min_relative: float = 0.25
    """Margin of a negligible change on |relative|: keeps a rare concept that is simply gone
    (relative = −1, |d_z| small). 0: unused."""
    n_bootstrap: int = 1000
    """Bootstrap replicates of each interval (0: none)."""
    n_permutations: int = 1000
    """Permutations of the paired test (0: none)."""
    top_images: int = 20
    """Images kept per concept (``top_images``, the report)."""
    seed: int = 0
    """Seed of the bootstrap, the permutations and the concept map."""
    ci_level: float = 0.95
    """Level of every confidence interval, in (0, 1)."""
    block_rows: int = 512
    """Rows per streamed block: one block of ``xi`` is block_rows × n_concepts float32
    (512 × 32,000 → 64 MB), held for the real and the generated side at once."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.suppressed_below < self.exaggerated_above < 1:
            raise ConfigError(
                "suppressed_below and exaggerated_above must satisfy 0 < suppressed_below < "
                f"exaggerated_above < 1, got {self.suppressed_below} and {self.exaggerated_above}"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_effect_size < 0 or self.min_relative < 0:
            raise ConfigError(
                "min_effect_size and min_relative must be ≥ 0 (0: unused), got "
                f"{self.min_effect_size} and {self.min_relative}"
            )
        if not 0 < self.ci_level < 1:
            raise ConfigError(f"ci_level must be in (0, 1), got {self.ci_level}")
        check_ints(self, 0, "n_bootstrap", "n_permutations")
        check_ints(self, 1, "top_images", "block_rows")
