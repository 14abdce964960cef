"""Top images ranked by the mean over patch tokens (the paper's authors) or by ξ (all tokens)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blindspot_assets.stats.top_images import top_images
from blindspot_assets.store.layout import code_arrays
from blindspot_assets.store.rowstore import RowStore


def test_patch_mean_ignores_cls_and_register_tokens(tmp_path: Path) -> None:
    n, t, c, k_max = 6, 1 + 4 + 4, 3, 2  # CLS, 4 registers, a 2×2 grid of patches
    idx = np.full((n, t, k_max), -1, np.int32)
    val = np.zeros((n, t, k_max), np.float16)
    # concept 0: image 0 has it huge on the CLS token only; image 1 on every patch, weakly
    idx[0, 0, 0], val[0, 0, 0] = 0, 50.0
    idx[1, 5:, 0], val[1, 5:, 0] = 0, 1.0
    # concept 2: image 2 on one patch (2.0), image 3 on two patches (1.5 each)
    idx[2, 6, 1], val[2, 6, 1] = 2, 2.0
    idx[3, 7:9, 1], val[3, 7:9, 1] = 2, 1.5
    xi = np.zeros((n, c), np.float32)
    np.add.at(xi, (np.repeat(np.arange(n), t * k_max), np.maximum(idx, 0).ravel()),
              np.where(idx >= 0, val, 0).astype(np.float32).ravel())  # fmt: skip
    store = RowStore.create_or_resume(
        tmp_path / "codes.zarr", [f"i{i}" for i in range(n)], code_arrays(t, c, k_max),
        {"fingerprint": "t"}, chunk_rows=4,
    )  # fmt: skip
    data = {"xi": xi, "nfire": (xi > 0).astype(np.uint16), "token_idx": idx, "token_val": val}
    store.write_block(0, data, np.ones(n, bool), ["ok"] * n)

    by_sum = top_images(store, 2, by="token_sum")
    by_patch = top_images(store, 2, by="patch_mean")
    first = lambda df, k: df.filter(concept=k, rank=1)["image_id"][0]  # noqa: E731
    assert first(by_sum, 0) == "i0" and first(by_patch, 0) == "i1"
    assert by_patch.filter(concept=0)["image_id"].to_list() == ["i1"]  # CLS-only image gone
    assert by_patch.filter(concept=0)["score"][0] == pytest.approx(1.0)  # mean over 4 patches
    assert by_patch.filter(concept=2)["image_id"].to_list() == ["i3", "i2"]
    assert by_patch.filter(concept=2)["score"].to_list() == pytest.approx([0.75, 0.5])
    with pytest.raises(ValueError, match="top_images_by"):
        top_images(store, 2, by="cls")
