"""The crop geometry has one owner: the encoder's processor, recorded with the features."""

from __future__ import annotations

from pathlib import Path

import pytest

from blindspot_assets.config import EncoderSpec
from blindspot_assets.demo.encoder import save_processor
from blindspot_assets.encoders.geometry import encoder_crop_fraction, processor_crop_fraction
from blindspot_assets.store.layout import REAL, DataLayout, feature_arrays
from blindspot_assets.store.rowstore import RowStore


@pytest.mark.parametrize(
    ("processor", "fraction"),
    [
        ({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
          "do_center_crop": True}, 224 / 256),  # the released DINOv2's
        ({"size": {"shortest_edge": 73}, "crop_size": {"height": 64, "width": 64},
          "do_center_crop": True}, 64 / 73),  # the demo's tiny encoder
        ({"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
          "do_center_crop": True}, 1.0),  # resize to the crop: the whole short side
        ({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
          "do_center_crop": False}, 1.0),  # no crop
        ({"size": {"height": 448, "width": 448}, "crop_size": {"height": 392, "width": 392},
          "do_center_crop": True}, 392 / 448),
    ],
)  # fmt: skip
def test_processor_crop_fraction(processor: dict[str, object], fraction: float) -> None:
    assert processor_crop_fraction(processor) == pytest.approx(fraction)


def test_the_run_reads_the_crop_of_its_features_then_of_its_processor(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "run")
    model = tmp_path / "encoder"
    save_processor(model, crop=112)  # another encoder: short side 128, crop 112
    spec = EncoderSpec(model_id=str(model), image_size=112)
    # no features yet: the processor saved with the encoder
    assert encoder_crop_fraction(layout, spec) == pytest.approx(112 / 128)
    # the feature store's lineage wins (what the encoder really saw when it ran)
    RowStore.create_or_resume(
        layout.features(REAL), ["a"], feature_arrays(5, 4), {"crop_fraction": 0.5}, chunk_rows=1
    )
    assert encoder_crop_fraction(layout, spec) == pytest.approx(0.5)
    # a hub id with neither: the released processor's ratio for the configured crop
    hub = EncoderSpec(model_id="facebook/dinov2-with-registers-base", image_size=224)
    assert encoder_crop_fraction(DataLayout(tmp_path / "empty"), hub) == pytest.approx(0.875)
