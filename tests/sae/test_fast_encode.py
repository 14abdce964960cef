"""The folded-LayerNorm encoder equals the model's LayerNorm(linear(x)) path."""

from __future__ import annotations

import pytest
import torch

from blindspot_assets.sae import RASAEConfig
from blindspot_assets.sae.fast_encode import FoldedEncoder, folded_encoder
from blindspot_assets.sae.model import RelaxedArchetypalSAE


def _model(layernorm: bool, c: int = 2100, d: int = 40) -> RelaxedArchetypalSAE:
    """c = 2,100: three blocks of concepts (1,024, 1,024, 52) with ``cols_per_block=1024``."""
    cfg = RASAEConfig(
        d=d, n_concepts=c, sparsity="batchtopk", k=8, n_candidates=0, encoder_layernorm=layernorm
    )
    model = RelaxedArchetypalSAE(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.encoder.weight.copy_(torch.randn(c, d, generator=g))
        model.encoder.bias.copy_(3.0 + torch.randn(c, generator=g))  # a shared offset
        if layernorm:
            model.norm.weight.copy_(0.5 + torch.rand(c, generator=g))
            model.norm.bias.copy_(0.3 * torch.randn(c, generator=g))
        model.threshold.fill_(1.2)
    return model


def _tokens(n: int, d: int) -> torch.Tensor:
    """Tokens with a large shared mean, as DINOv2's are (the case where cancellation bites)."""
    g = torch.Generator().manual_seed(2)
    return 20.0 + torch.randn(d, generator=g) * 4 + torch.randn(n, d, generator=g)


@pytest.mark.parametrize("layernorm", [True, False])
def test_folded_pre_activations_equal_the_layers(layernorm: bool) -> None:
    model = _model(layernorm)
    x = _tokens(500, model.cfg.d)
    with torch.no_grad():
        dense = model.pre_activations(x)
        folded = FoldedEncoder.from_layers(model.encoder, model.norm, model.cfg.layernorm_eps, 1024)
        got = folded.pre_activations(x)
    scale = float(dense.abs().max())
    assert float((got - dense).abs().max()) <= 2e-5 * scale


@pytest.mark.parametrize("rows_per_chunk", [96, None])
def test_encode_entries_match_the_dense_codes_away_from_theta(rows_per_chunk: int | None) -> None:
    """The non-zero codes of the folded path are the dense codes' (except entries within
    float rounding of θ, which either path may keep), in one chunk or several."""
    model = _model(True)
    x = _tokens(700, model.cfg.d)
    with torch.no_grad():
        dense = model.encode(x)
        pre = model.pre_activations(x)
        if rows_per_chunk is None:
            rows, cols, vals = model.encode_entries(x)
        else:  # 8 chunks of 88 rows: the rows must come back offset and in order
            folded = FoldedEncoder.from_layers(
                model.encoder, model.norm, model.cfg.layernorm_eps, 1024
            )
            rows, cols, vals = folded.entries_above(x, 1.2, rows_per_chunk)
    assert torch.all(rows[1:] >= rows[:-1])  # row-sorted
    got = torch.zeros_like(dense)
    got[rows, cols] = vals
    near_theta = (pre - 1.2).abs() < 1e-4
    assert float(near_theta.float().mean()) < 1e-3
    assert torch.equal(got[~near_theta] > 0, dense[~near_theta] > 0)
    assert float((got - dense)[~near_theta].abs().max()) < 1e-4
    assert rows.numel() > 0.5 * int((dense > 0).sum())


def test_folded_weights_follow_in_place_updates() -> None:
    model = _model(True)
    x = _tokens(64, model.cfg.d)
    eps = model.cfg.layernorm_eps
    first = folded_encoder(model.encoder, model.norm, eps)
    assert folded_encoder(model.encoder, model.norm, eps) is first  # cached
    with torch.no_grad():
        model.norm.weight.mul_(2.0)  # an in-place change (an optimizer step, a load)
        again = folded_encoder(model.encoder, model.norm, eps)
        assert again is not first
        want = model.pre_activations(x)
        assert torch.allclose(again.pre_activations(x), want, rtol=0, atol=1e-4)


def test_topk_entries_are_the_dense_top_k() -> None:
    """TopK codes from per-block winners equal the dense top k of each token (three concept
    blocks, several token chunks)."""
    model = _model(True)
    model.cfg = RASAEConfig(**{**model.cfg.to_dict(), "sparsity": "topk"})
    x = _tokens(300, model.cfg.d)
    with torch.no_grad():
        folded = FoldedEncoder.from_layers(model.encoder, model.norm, model.cfg.layernorm_eps, 1024)
        vals, idx = folded.top_k(x, 8, rows_per_chunk=64)
        want_vals, want_idx = model.pre_activations(x).topk(8, dim=1)
        rows, cols, kept = model.encode_entries(x)
    assert torch.equal(idx, want_idx)
    assert torch.allclose(vals, want_vals, rtol=0, atol=1e-4)
    on = want_vals > 0
    assert torch.equal(cols, want_idx[on]) and torch.equal(rows, on.nonzero()[:, 0])
    assert torch.allclose(kept, want_vals[on], rtol=0, atol=1e-4)
