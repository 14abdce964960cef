"""Phase-1 contract: training recovers a planted dictionary, encoding to a codes store,
save/load identity, resumable encoding."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from blindspot_assets.sae import encode_features_to_codes, load_sae, save_sae
from blindspot_assets.store.rowstore import RowStore
from tests.sae.conftest import Trained


def _max_cosines(atoms_ad: np.ndarray, dict_cd: np.ndarray) -> np.ndarray:
    unit = dict_cd / np.linalg.norm(dict_cd, axis=1, keepdims=True)
    return np.asarray((atoms_ad @ unit.T).max(axis=1))


def test_training_recovers_planted_dictionary(trained: Trained) -> None:
    m = trained.result.metrics
    assert m["r2"] > 0.9
    assert 0 < m["mean_l0"] < 2 * trained.result.sae_config.k
    assert m["dead_fraction"] < 0.25
    # only the 198 valid rows × 16 tokens are training tokens
    assert m["dataset_tokens"] == 198 * 16
    d_cd = trained.result.model.dictionary().detach().numpy()
    cos = _max_cosines(trained.atoms, d_cd)
    assert (cos >= 0.9).mean() >= 0.9, np.round(np.sort(cos), 2)
    assert len(trained.result.data_version) == 16
    assert np.isfinite(m["threshold"]) and m["threshold"] > 0


def test_candidates_are_clamped_to_the_data(tmp_path: Path) -> None:
    from blindspot_assets.sae import RASAEConfig, TrainConfig, train_sae
    from tests.sae.planted import planted_atoms, write_planted_store

    write_planted_store(tmp_path / "f.zarr", planted_atoms(8, 8, 0), 4, 8, seed=2, chunk_rows=2)
    cfg = RASAEConfig(d=8, n_concepts=64, k=2, n_candidates=1000, sparsity="topk")
    tc = TrainConfig(epochs=2, batch_size=8, kmeans_tokens=64, kmeans_batch=16, eval_tokens=32)
    res = train_sae([tmp_path / "f.zarr"], cfg, tc)
    assert res.metrics["n_candidates"] == 32 and res.metrics["n_concepts"] == 32
    assert any("n_candidates" in a for a in res.metrics["adjustments"])


def test_encode_writes_energy_fire_counts_and_token_codes(trained: Trained, tmp_path: Path) -> None:
    model = trained.result.model
    codes_path = tmp_path / "codes.zarr"
    summary = encode_features_to_codes(model, trained.features, codes_path, k_max=6)
    feats, codes = RowStore.open(trained.features), RowStore.open(codes_path)
    assert summary["rows"] == 200 and summary["valid_rows"] == 198
    assert codes.is_complete()
    assert list(codes.valid()) == list(feats.valid())
    assert codes.status()[3] == feats.status()[3] != "ok"
    assert not codes.array("xi")[3].any()

    tokens = torch.from_numpy(np.asarray(feats.array("tokens")[:8], dtype=np.float32))
    with torch.no_grad():
        z_rtc = model.encode(tokens.reshape(-1, 32)).view(8, 16, -1).numpy()
    np.testing.assert_allclose(
        codes.array("xi")[:8][[0, 1, 2, 4]], z_rtc.sum(1)[[0, 1, 2, 4]], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(
        codes.array("nfire")[:8][[0, 1, 2, 4]], (z_rtc > 0).sum(1)[[0, 1, 2, 4]]
    )
    idx, val = codes.array("token_idx")[0], codes.array("token_val")[0].astype(np.float32)
    for t in range(16):
        active = np.flatnonzero(z_rtc[0, t] > 0)
        kept = idx[t][idx[t] >= 0]
        assert set(kept) <= set(active)
        assert len(kept) == min(len(active), 6)
        np.testing.assert_allclose(val[t][: len(kept)], z_rtc[0, t, kept], rtol=2e-3, atol=1e-3)
        assert (val[t][idx[t] < 0] == 0).all()
    assert summary["mean_l0"] == pytest.approx(float((z_rtc > 0).sum(-1).mean()), rel=0.5)


def test_save_load_is_identity(trained: Trained, tmp_path: Path) -> None:
    model = trained.result.model
    header = save_sae(
        model,
        tmp_path / "sae",
        {"data_version": trained.result.data_version, "step": trained.result.metrics["steps"]},
    )
    loaded, h2 = load_sae(tmp_path / "sae")
    assert h2 == header and h2["schema"] == "blindspot.rasae/1"
    assert h2["config"] == model.cfg.to_dict() and "torch" in h2["library"]
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in (tmp_path / "sae").iterdir())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    x = torch.randn(64, 32)
    with torch.no_grad():
        assert torch.equal(model.encode(x), loaded.encode(x))
        assert torch.equal(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))


def test_encode_resumes_only_pending_blocks(trained: Trained, tmp_path: Path) -> None:
    model = trained.result.model
    full = tmp_path / "full.zarr"
    encode_features_to_codes(model, trained.features, full, k_max=4)

    class Interrupted(Exception):
        pass

    def stop_after_two_blocks(done: int, total: int) -> None:
        if done >= 32:
            raise Interrupted

    part = tmp_path / "part.zarr"
    with pytest.raises(Interrupted):
        encode_features_to_codes(
            model, trained.features, part, k_max=4, progress=stop_after_two_blocks
        )
    assert RowStore.open(part).done().sum() == 32
    summary = encode_features_to_codes(model, trained.features, part, k_max=4)
    assert summary["rows_computed"] == 200 - 32
    a, b = RowStore.open(full), RowStore.open(part)
    for name in ("xi", "nfire", "token_idx", "token_val", "valid"):
        np.testing.assert_array_equal(a.array(name)[:], b.array(name)[:])
    # a different k_max is a different store: rebuilt, not resumed
    again = encode_features_to_codes(model, trained.features, part, k_max=5)
    assert again["rows_computed"] == 200


def test_token_budget_sets_the_schedule_length(tmp_path: Path) -> None:
    from blindspot_assets.sae import RASAEConfig, TrainConfig, train_sae
    from tests.sae.planted import planted_atoms, write_planted_store

    write_planted_store(tmp_path / "f.zarr", planted_atoms(8, 8, 0), 64, 8, seed=2, chunk_rows=8)
    cfg = RASAEConfig(d=8, n_concepts=16, k=2, n_candidates=32, sparsity="topk")
    tc = TrainConfig(epochs=3, batch_size=32, kmeans_tokens=64, kmeans_batch=16, eval_tokens=32)
    full = train_sae([tmp_path / "f.zarr"], cfg, tc)
    assert full.metrics["total_steps"] == 3 * 512 // 32
    budget = train_sae([tmp_path / "f.zarr"], cfg, replace(tc, max_tokens=200))
    assert budget.metrics["total_steps"] == budget.metrics["steps"] == 200 // 32
    assert budget.metrics["tokens_seen"] == 6 * 32
    assert any("max_tokens 200" in a for a in budget.metrics["adjustments"])
    # a budget above the run changes nothing
    same = train_sae([tmp_path / "f.zarr"], cfg, replace(tc, max_tokens=10**6))
    assert same.metrics["total_steps"] == full.metrics["total_steps"]
    with pytest.raises(ValueError, match="below one batch"):
        replace(tc, max_tokens=8)


def test_an_untrained_sae_fails_the_recovery_thresholds(trained: Trained) -> None:
    """The baseline of the recovery test: the same initialisation (k-means candidates, the
    archetypal dictionary) stopped after one step recovers the planted atoms nowhere near the
    thresholds the trained model meets, so meeting them is the training's doing."""
    from blindspot_assets.sae import train_sae
    from tests.sae.conftest import TINY_SAE, TINY_TRAIN

    untrained = train_sae([trained.features], TINY_SAE, replace(TINY_TRAIN, max_steps=1))
    cos = _max_cosines(trained.atoms, untrained.model.dictionary().detach().numpy())
    assert (cos >= 0.9).mean() < 0.9
    assert untrained.metrics["r2"] < 0.9
