"""Training mechanics: projections, BatchTopK threshold, AuxK revival, LR schedule, clipping,
exact resume."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from blindspot_assets.sae import RASAEConfig, TrainConfig, train_sae
from blindspot_assets.sae import model as model_module
from blindspot_assets.sae import train as train_module
from blindspot_assets.sae.model import RelaxedArchetypalSAE
from blindspot_assets.sae.train import Trainer, lr_at, top_k_columns
from tests.sae.planted import planted_atoms, write_planted_store

CPU = torch.device("cpu")


def _planted_tokens(n: int, d: int = 16, n_atoms: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=g), dim=1)
    coef = torch.rand(n, n_atoms, generator=g) * (torch.rand(n, n_atoms, generator=g) < 0.2)
    return coef @ atoms + 0.01 * torch.randn(n, d, generator=g)


def _model(x: torch.Tensor, **kw: object) -> RelaxedArchetypalSAE:
    cfg = RASAEConfig(
        **{"d": x.shape[1], "n_concepts": 24, "k": 3, "n_candidates": 64, "delta_relax": 0.05, **kw}  # type: ignore[arg-type]
    )
    model = RelaxedArchetypalSAE(cfg, x[: cfg.n_candidates].clone())
    model.project_()
    model.init_encoder_from_dictionary()
    return model.train()


def test_projection_keeps_w_row_stochastic_and_lambda_clipped() -> None:
    x = _planted_tokens(512)
    model = _model(x)
    trainer = Trainer(model, TrainConfig(lr=0.05, grad_clip=0), CPU)
    reached_bound = False
    for i in range(30):
        trainer.step(x[(i * 64) % 512 :][:64], lr=0.05)
        assert (model.W >= 0).all()
        torch.testing.assert_close(model.W.sum(dim=1), torch.ones(24), atol=1e-5, rtol=0)
        norms = model.relax.norm(dim=1)
        assert (norms <= model.cfg.delta_relax * (1 + 1e-5)).all()
        reached_bound |= bool((norms > 0.99 * model.cfg.delta_relax).any())
    assert reached_bound, "Λ never reached δ: the clipping was not exercised"
    # the dictionary is exp(m)·(W·C + Λ): inside the (scaled) hull of C up to δ
    with torch.no_grad():
        d_cd = model.dictionary() / torch.exp(model.log_scale)
        hull = model.W @ model.C
        assert ((d_cd - hull).norm(dim=1) <= model.cfg.delta_relax * (1 + 1e-4)).all()


def test_batchtopk_threshold_tracks_the_batch_kth_value() -> None:
    x = _planted_tokens(1024)
    model = _model(x, sparsity="batchtopk", threshold_momentum=0.5)
    assert math.isnan(float(model.threshold))
    with pytest.raises(RuntimeError, match="threshold"):
        model.eval().encode(x[:4])
    model.train()
    expected = None
    for i in range(8):
        batch = x[i * 128 : (i + 1) * 128]
        with torch.no_grad():
            codes = model.pre_codes(batch)
            kth = codes.flatten().topk(3 * 128).values.min()
            z = model.sparsify(codes, update_threshold=True)
        assert int((z > 0).sum()) >= 3 * 128 - 5  # the batch keeps ~k per token on average
        expected = kth if expected is None else 0.5 * expected + 0.5 * kth
        torch.testing.assert_close(model.threshold, expected)
    model.eval()
    with torch.no_grad():
        z = model.encode(x)
        assert torch.equal(z, model.pre_codes(x) * (model.pre_codes(x) >= model.threshold))
        assert 1.0 < float((z > 0).sum(dim=1).float().mean()) < 6.0


def test_auxk_revives_planted_dead_concepts() -> None:
    x = _planted_tokens(2048)

    def dead_after(aux_weight: float) -> float:
        torch.manual_seed(0)
        model = _model(x, sparsity="batchtopk")
        with torch.no_grad():  # plant: half the concepts point away from all data
            mean_dir = torch.nn.functional.normalize(x.mean(dim=0), dim=0)
            model.encoder.weight[12:] = -2.0 * mean_dir
            model.encoder.bias[12:] = -3.0
        cfg = TrainConfig(lr=3e-2, aux_weight=aux_weight, dead_after_tokens=256, grad_clip=0)
        trainer = Trainer(model, cfg, CPU)
        for _ in range(10):
            fired = torch.zeros(24, dtype=torch.bool)
            for i in range(0, 2048, 128):
                out = trainer.step(x[i : i + 128], lr=3e-2)
                fired |= out["fired"]
        return 1.0 - float(fired[12:].float().mean())  # dead in the last epoch

    without, with_aux = dead_after(0.0), dead_after(1.0)
    assert without >= 0.9  # the planted concepts stay dead without AuxK
    assert with_aux <= 0.25


def test_lr_warms_up_linearly_then_decays_by_cosine() -> None:
    cfg = TrainConfig(lr=1e-3, lr_end=1e-5, warmup_frac=0.1)
    lrs = [lr_at(s, 200, cfg) for s in range(200)]
    warm = lrs[:20]
    assert all(b > a for a, b in zip(warm, warm[1:], strict=False))
    assert lrs[19] == pytest.approx(1e-3)
    decay = lrs[20:]
    assert all(b <= a for a, b in zip(decay, decay[1:], strict=False))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.01, abs=1e-6)
    assert lr_at(110, 200, cfg) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-6)


def test_gradients_are_clipped_to_the_configured_norm() -> None:
    x = _planted_tokens(256) * 100.0  # large inputs, large gradients
    model = _model(x)
    trainer = Trainer(model, TrainConfig(grad_clip=0.01), CPU)
    trainer.step(x[:128], lr=1e-4)
    assert trainer.last_grad_norm > 0.01
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert float(total) <= 0.01 * (1 + 1e-4)


def model_dtype(trainer: Trainer) -> torch.dtype:
    with torch.no_grad():
        return trainer.model.pre_activations(torch.zeros(1, trainer.model.cfg.d)).dtype


def test_cpu_training_runs_in_float32_without_autocast() -> None:
    x = _planted_tokens(128)
    trainer = Trainer(_model(x), TrainConfig(), CPU)
    assert not trainer.use_amp
    out = trainer.step(x, lr=1e-3)
    assert out["x_hat"].dtype == torch.float32 and model_dtype(trainer) == torch.float32
    assert 0 < float(out["l0"]) <= 3


def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    write_planted_store(tmp_path / "f.zarr", planted_atoms(10, 16, 0), 40, 12, seed=3)
    sae_cfg = RASAEConfig(d=16, n_concepts=20, k=2, n_candidates=48, sparsity="batchtopk")
    tc = TrainConfig(
        epochs=3,
        batch_size=100,
        lr=3e-3,
        buffer_tokens=150,
        kmeans_tokens=500,
        kmeans_batch=100,
        checkpoint_every=3,
        log_every=1,
        eval_tokens=200,
        dead_after_tokens=200,
    )
    ref = train_sae([tmp_path / "f.zarr"], sae_cfg, replace(tc, checkpoint_every=0))

    class Crash(Exception):
        pass

    def crash_at_step_8(m: dict[str, object]) -> None:
        if m["step"] == 8:
            raise Crash

    with pytest.raises(Crash):
        train_sae([tmp_path / "f.zarr"], sae_cfg, tc, tmp_path / "ckpt", log=crash_at_step_8)
    # run control (log cadence, step budget) may change across a resume
    resumed = train_sae(
        [tmp_path / "f.zarr"], sae_cfg, replace(tc, log_every=5, max_steps=1000), tmp_path / "ckpt"
    )
    assert "resumed from step 6" in resumed.metrics["adjustments"]
    assert resumed.metrics["steps"] == ref.metrics["steps"] == (40 * 12 * 3) // 100
    ref_sd, res_sd = ref.model.state_dict(), resumed.model.state_dict()
    assert ref_sd.keys() == res_sd.keys()
    for name in ref_sd:
        assert ref_sd[name].numpy().tobytes() == res_sd[name].numpy().tobytes(), name
    # a checkpoint of another config is not resumed
    other = train_sae([tmp_path / "f.zarr"], sae_cfg, replace(tc, lr=1e-3), tmp_path / "ckpt")
    assert not any("resumed" in a for a in other.metrics["adjustments"])


@pytest.mark.parametrize("sparsity", ["topk", "batchtopk"])
def test_inference_encode_equals_the_training_math(sparsity: str) -> None:
    x = _planted_tokens(256)
    model = _model(x, sparsity=sparsity)
    model.sparsify(model.pre_codes(x).detach(), update_threshold=True)
    model.eval()
    reference = model.sparsify(model.pre_codes(x), update_threshold=False).detach()
    with torch.no_grad():
        fast = model.encode(x)
    assert torch.equal(fast, reference)


def _dense_reference_loss(
    model: RelaxedArchetypalSAE, x: torch.Tensor, dead_c: torch.Tensor, aux_weight: float
) -> torch.Tensor:
    """The step's loss written densely: full pre-activations, dense codes, plain autograd."""
    pre = model.pre_activations(x)
    codes = torch.relu(pre)
    if model.cfg.sparsity == "topk":
        z = model.sparsify(codes)
    else:
        theta = codes.detach().flatten().topk(model.cfg.k * x.shape[0]).values.min()
        z = codes * (codes >= theta)
    x_hat = z @ model.dictionary()
    loss = ((x_hat - x) ** 2).mean()
    if aux_weight > 0:
        k_aux = min(model.cfg.effective_aux_k, int(dead_c.sum()))
        idx = pre.masked_fill(~dead_c, float("-inf")).topk(k_aux, dim=-1).indices
        target = (x - x_hat).detach()
        e_hat = pre.gather(-1, idx)[..., None].mul(model.dictionary()[idx]).sum(dim=1)
        err = ((e_hat - target) ** 2).sum(dim=-1).mean() / ((target**2).sum(dim=-1).mean() + 1e-8)
        loss = loss + aux_weight * err
    return loss


@pytest.mark.parametrize("sparsity", ["topk", "batchtopk"])
@pytest.mark.parametrize("layernorm", [True, False])
@pytest.mark.parametrize("aux_weight", [0.0, 0.5])
def test_sparse_step_gradients_equal_dense_autograd(
    sparsity: str, layernorm: bool, aux_weight: float
) -> None:
    """The step's sparse encoder backward (no n × c gradient) gives autograd's gradients for
    every parameter, LayerNorm's included, with BatchTopK and AuxK (a third of concepts dead)."""
    torch.manual_seed(0)
    x = _planted_tokens(96) * 3.0 + 0.5  # an offset: the LayerNorm mean is far from zero
    model = _model(x, sparsity=sparsity, encoder_layernorm=layernorm)
    with torch.no_grad():  # generic weights, not the symmetric initialisation
        model.encoder.weight.normal_()
        model.encoder.bias.normal_()
        if layernorm:
            model.norm.weight.uniform_(0.5, 1.5)
            model.norm.bias.normal_(0.0, 0.1)
    trainer = Trainer(model, TrainConfig(aux_weight=aux_weight, dead_after_tokens=1), CPU)
    trainer.silent_c[::3] = 1  # dead
    out = trainer._losses(x, trainer.dead_c())
    loss = out["mse"] + aux_weight * out["aux"]
    reference = _dense_reference_loss(model, x, trainer.dead_c(), aux_weight)
    assert float(loss) == pytest.approx(float(reference), rel=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(loss, params, retain_graph=True)
    dense = torch.autograd.grad(reference, params)
    for name, g, g_ref in zip(
        [n for n, p in model.named_parameters() if p.requires_grad], ours, dense, strict=True
    ):
        scale = float(g_ref.abs().max())
        assert scale > 0, name
        assert float((g - g_ref).abs().max()) <= 1e-5 * scale, name


def _generic_model(x: torch.Tensor, sparsity: str, layernorm: bool = True) -> RelaxedArchetypalSAE:
    """Generic weights (not the symmetric initialisation), a scale m ≠ 0 and Λ ≠ 0: every
    factor of D = exp(m)·(W·C + Λ) shows in the gradients."""
    model = _model(x, sparsity=sparsity, encoder_layernorm=layernorm)
    with torch.no_grad():
        model.encoder.weight.normal_()
        model.encoder.bias.normal_()
        if layernorm:
            model.norm.weight.uniform_(0.5, 1.5)
            model.norm.bias.normal_(0.0, 0.1)
        model.W.uniform_(0.0, 1.0)
        model.relax.normal_(0.0, 0.02)
        model.log_scale.fill_(0.3)
    model.project_()
    return model


def _assert_grads_close(
    model: RelaxedArchetypalSAE, got: list[torch.Tensor], want: list[torch.Tensor]
) -> None:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, g, g_ref in zip(names, got, want, strict=True):
        scale = float(g_ref.abs().max())
        assert scale > 0, name
        assert float((g - g_ref).abs().max()) <= 1e-5 * scale, name


@pytest.mark.parametrize("sparsity", ["topk", "batchtopk"])
@pytest.mark.parametrize("aux_weight", [0.0, 0.5])
def test_blocked_selection_with_scale_gives_dense_gradients(
    sparsity: str, aux_weight: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TopK and AuxK pick entries in blocks of 5 rows (LayerNorm and selection block by block),
    with exp(m) applied to the codes and the atoms P = Λ + W·C decoded by ``_SparseDecode``:
    the loss and every gradient equal plain dense autograd's."""
    monkeypatch.setattr(model_module, "_BLOCK_FLOATS", 5 * 24)
    monkeypatch.setattr(train_module, "_GROUP", 2)  # two-stage TopK: 12 groups of 2 concepts
    torch.manual_seed(1)
    x = _planted_tokens(96) * 3.0 + 0.5
    model = _generic_model(x, sparsity)
    trainer = Trainer(model, TrainConfig(aux_weight=aux_weight, dead_after_tokens=1), CPU)
    trainer.silent_c[1::3] = 1  # dead
    out = trainer._losses(x, trainer.dead_c())
    loss = out["mse"] + aux_weight * out["aux"]
    reference = _dense_reference_loss(model, x, trainer.dead_c(), aux_weight)
    assert float(loss) == pytest.approx(float(reference), rel=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    _assert_grads_close(
        model,
        list(torch.autograd.grad(loss, params, retain_graph=True)),
        list(torch.autograd.grad(reference, params)),
    )


def test_sparse_decode_equals_dense_codes_times_dictionary() -> None:
    """Ragged rows (some empty), negative codes, exp(m) ≠ 1: x̂ and the gradients of the codes,
    the atoms and m equal autograd through z·(exp(m)·P)."""
    g = torch.Generator().manual_seed(5)
    n, c, d = 40, 30, 8
    dense = torch.randn(n, c, generator=g) * (torch.rand(n, c, generator=g) < 0.15)
    dense[7] = 0.0
    rows, cols = dense.nonzero(as_tuple=True)
    vals = dense[rows, cols].clone().requires_grad_(True)
    atoms = torch.randn(c, d, generator=g, requires_grad=True)
    log_scale = torch.tensor(-0.4, requires_grad=True)
    model = _model(_planted_tokens(64, d=d), n_concepts=c, k=2)
    x_hat = model.decode_train((atoms, log_scale), vals, rows, cols, n)
    z = torch.zeros(n, c).index_put((rows, cols), vals)
    reference = z @ (torch.exp(log_scale) * atoms)
    torch.testing.assert_close(x_hat, reference, rtol=1e-5, atol=1e-6)
    upstream = torch.randn(n, d, generator=g)
    got = torch.autograd.grad(x_hat, [vals, atoms, log_scale], upstream)
    want = torch.autograd.grad(reference, [vals, atoms, log_scale], upstream)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class _NoGradRecycling(dict[str, torch.Tensor]):
    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if not key.endswith(".grad"):
            super().__setitem__(key, value)


def test_step_clips_like_clip_grad_norm_and_recycles_w_grad(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step's gradients (after clipping folded into AdamW's grad_scale) equal dense autograd
    clipped by ``clip_grad_norm_``; the second step writes the gradients of W, Λ and the
    encoder into the first one's memory; and three steps leave the same weights, bit for bit,
    as without that recycling."""
    monkeypatch.setattr(model_module, "_BLOCK_FLOATS", 7 * 24)
    x = _planted_tokens(128) * 20.0
    model = _generic_model(x, "topk")
    reference_model = copy.deepcopy(model)
    cfg = TrainConfig(grad_clip=0.05, aux_weight=0.0)
    trainer = Trainer(model, cfg, CPU)
    trainer.step(x, lr=0.0)  # lr 0: the step leaves the clipped gradients to compare
    params = [p for p in reference_model.parameters() if p.requires_grad]
    ref_loss = _dense_reference_loss(reference_model, x, torch.zeros(24, dtype=torch.bool), 0.0)
    ref_grads = torch.autograd.grad(ref_loss, params)
    ref_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in ref_grads]))
    assert float(ref_norm) > 0.05
    assert trainer.last_grad_norm == pytest.approx(float(ref_norm), rel=1e-5)
    clipped = [g * (0.05 / (ref_norm + 1e-6)) for g in ref_grads]
    _assert_grads_close(model, [p.grad for p in model.parameters() if p.requires_grad], clipped)

    recycled = [model.W, model.relax, model.encoder.weight]
    first_ptrs = [p.grad.data_ptr() for p in recycled]  # type: ignore[union-attr]
    trainer.step(x, lr=1e-3)
    assert [p.grad.data_ptr() for p in recycled] == first_ptrs  # type: ignore[union-attr]
    trainer.step(x * 0.5, lr=1e-3)
    plain = Trainer(reference_model, cfg, CPU)
    plain.scratch = _NoGradRecycling()
    for batch, lr in ((x, 0.0), (x, 1e-3), (x * 0.5, 1e-3)):
        plain.step(batch, lr=lr)
    named = zip(model.named_parameters(), reference_model.parameters(), strict=True)
    for (name, p), p_plain in named:
        assert torch.equal(p, p_plain), name


@pytest.mark.parametrize("n_concepts", [4096, 200])
def test_two_stage_top_k_equals_torch_topk(n_concepts: int) -> None:
    """Per row the same values in the same order as ``torch.topk``, at the columns holding
    them: planted ties (a row of repeats, rows with equal values across groups), a row whose
    top k crowd into few groups, −inf and a column count that is not a multiple of 16."""
    g = torch.Generator().manual_seed(3)
    pre = torch.randn(64, n_concepts, generator=g)
    pre[0] = 1.0  # all tied
    pre[1, ::16] = 5.0  # ties across groups, at the top
    pre[2, :40] += 10.0  # the top k in the first few groups of 16 consecutive columns
    pre[3, 100:] = float("-inf")
    pre[4] = torch.round(pre[4] * 2) / 2  # many ties at the k-th value
    k = 32 if n_concepts == 4096 else 5
    cols = top_k_columns(pre, k)
    want = pre.topk(k, dim=-1)
    assert cols.shape == want.indices.shape
    torch.testing.assert_close(pre.gather(1, cols), want.values, rtol=0, atol=0)
    assert all(len(set(row.tolist())) == k for row in cols)  # distinct columns
    untied = (want.values[:, 1:] != want.values[:, :-1]).all(dim=1)
    untied &= (pre > want.values[:, -1:]).sum(dim=1) == k - 1  # no tie at the k-th value
    assert int(untied.sum()) > 50
    assert torch.equal(cols[untied], want.indices[untied])


def test_mean_squared_error_equals_mse_loss_bit_for_bit() -> None:
    """The step's MSE (residual in a kept buffer, reused by the backward) gives F.mse_loss's
    value and gradient bit for bit, twice over the same buffers; with an upstream factor ≠ 1
    the gradient equals to float rounding."""
    g = torch.Generator().manual_seed(7)
    buffers: dict[str, torch.Tensor] = {}
    for _ in range(2):
        x_hat = torch.randn(50, 12, generator=g, requires_grad=True)
        target = torch.randn(50, 12, generator=g)
        ours = train_module._MeanSquaredError.apply(x_hat, target, buffers)
        ref = torch.nn.functional.mse_loss(x_hat, target)
        assert torch.equal(ours, ref)
        (got,) = torch.autograd.grad(ours, x_hat)
        (want,) = torch.autograd.grad(ref, x_hat)
        assert torch.equal(got, want)
        assert got.data_ptr() == buffers["residual"].data_ptr()
    (got,) = torch.autograd.grad(
        3.0 * train_module._MeanSquaredError.apply(x_hat, target, None), x_hat
    )
    (want,) = torch.autograd.grad(3.0 * torch.nn.functional.mse_loss(x_hat, target), x_hat)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
