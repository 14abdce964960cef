"""Import the authors' released RA-SAE (``matybohacek/RA-SAE-DINOv2-32k``) without running it.

The release is ``torch.save(DataParallel(BatchTopKSAE))`` from the ``overcomplete`` library: a
pickle of whole modules. Loading a pickle runs whatever callables it names, so it is read with
``torch.load(weights_only=True, mmap=True)``: torch's own restricted unpickler, which rebuilds
tensors (memory-mapped from the file, copy-on-write) and plain containers and refuses every
global not allow-listed. The allow-list adds, under their genuine names, the classes of
``overcomplete`` and ``torch.nn`` that a released SAE is built of (:data:`RELEASE_CLASSES`), as
inert :class:`Placeholder` stubs that only record their pickled state: no import of those
modules, no code of theirs. Any other global (``os.system``, ``builtins.eval``, an unknown
class, ...) stops the load with :class:`UnsafeCheckpointError`.

The placeholders' state is then read like a state dict and converted into our fused-dictionary
:class:`RelaxedArchetypalSAE` (safetensors + JSON header, docs/method.md §4).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from blindspot_assets.sae.checkpoint import load_sae, read_header, save_sae
from blindspot_assets.sae.config import RASAEConfig, Sparsity
from blindspot_assets.sae.model import RelaxedArchetypalSAE

RELEASE_CLASSES = (
    # overcomplete's SAEs, their dictionaries and encoders (overcomplete.sae)
    "overcomplete.sae.batchtopk_sae.BatchTopKSAE",
    "overcomplete.sae.topk_sae.TopKSAE",
    "overcomplete.sae.base.SAE",
    "overcomplete.sae.archetypal_dictionary.RelaxedArchetypalDictionary",
    "overcomplete.sae.dictionary.DictionaryLayer",
    "overcomplete.sae.modules.MLPEncoder",
    # the torch.nn modules they are made of, and the multi-GPU wrappers of torch.save
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.normalization.LayerNorm",
    "torch.nn.modules.batchnorm.BatchNorm1d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.parallel.data_parallel.DataParallel",
    "torch.nn.parallel.distributed.DistributedDataParallel",
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint names something that could run code on load; nothing was executed."""


class Placeholder:
    """An inert stand-in for a class of the pickle: it only stores what the pickle gives it.

    Read its content with :func:`children`, :func:`tensors_of` and :func:`attr` (functions, so
    that no pickled attribute can shadow them).
    """

    _placeholder_qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = super().__new__(cls)
        obj.__dict__["_pickle_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_pickle_args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_pickle_state"] = state

    def __repr__(self) -> str:
        return f"<placeholder {type(self)._placeholder_qualname}>"


def qualname(node: Placeholder) -> str:
    return type(node)._placeholder_qualname


def short_name(node: Placeholder) -> str:
    return qualname(node).rsplit(".", 1)[-1]


def children(node: Placeholder) -> dict[str, Any]:
    """The submodules of a pickled ``nn.Module`` (its ``_modules``)."""
    return dict(node.__dict__.get("_modules") or {})


def tensors_of(node: Placeholder) -> dict[str, Tensor]:
    """The parameters and buffers of a pickled ``nn.Module``."""
    out: dict[str, Tensor] = {}
    for key in ("_parameters", "_buffers"):
        for k, v in (node.__dict__.get(key) or {}).items():
            if isinstance(v, Tensor):
                out[k] = v.detach()  # torch rebuilds nn.Parameters: read as plain tensors
    return out


def attr(node: Placeholder, name: str, default: Any = None) -> Any:
    value = node.__dict__.get(name, default)
    return value.detach() if isinstance(value, Tensor) else value


def _placeholder_class(qualified: str) -> type[Placeholder]:
    name = qualified.rsplit(".", 1)[-1]
    return type(name, (Placeholder,), {"_placeholder_qualname": qualified})


_STUBS: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
    (_placeholder_class(q), q) for q in RELEASE_CLASSES
]


def read_torch_pickle(src: Path) -> Any:
    """The object graph of a ``torch.save`` zip file: ``torch.load(weights_only=True,
    mmap=True)`` with :data:`RELEASE_CLASSES` allowed as placeholders. Tensors are views of a
    private copy-on-write memory map of ``src``."""
    src = Path(src)
    if not zipfile.is_zipfile(src):
        raise ValueError(
            f"{src} is not a torch zip checkpoint (torch ≥ 1.6 format); legacy and raw pickle "
            "files are not read"
        )
    try:
        with torch.serialization.safe_globals(_STUBS):
            return torch.load(src, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        reason = next((line for line in str(err).splitlines() if "GLOBAL" in line), str(err))
        raise UnsafeCheckpointError(
            f"{src}: refusing to load: {reason.strip()} Only tensors, plain containers and the "
            "module state of overcomplete/torch.nn classes (RELEASE_CLASSES) are read from a "
            "released checkpoint; nothing from this file was executed."
        ) from None


# -- conversion ---------------------------------------------------------------------------------
def _leaves(node: Placeholder) -> list[Placeholder]:
    kids = [k for k in children(node).values() if isinstance(k, Placeholder)]
    if not kids:
        return [node]
    out: list[Placeholder] = []
    for kid in kids:
        out += _leaves(kid)
    return out


def _unwrap(root: Any) -> Placeholder:
    if not isinstance(root, Placeholder):
        raise ValueError(f"the checkpoint holds a {type(root).__name__}, not a pickled SAE module")
    node = root
    while "encoder" not in children(node):
        kids = children(node)
        if set(kids) != {"module"} or not isinstance(kids["module"], Placeholder):
            raise ValueError(f"no SAE (a module with an encoder) inside {qualname(root)}")
        node = kids["module"]  # DataParallel / DistributedDataParallel wrapper
    return node


def _encoder_parts(encoder: Placeholder) -> dict[str, Any]:
    """Linear → (LayerNorm | BatchNorm1d)? → ReLU, as overcomplete's one-block encoders."""
    blocks = children(encoder).get("mlp_blocks")
    if isinstance(blocks, Placeholder) and children(blocks):
        raise ValueError("encoders with hidden MLP blocks are not supported (only Linear+norm)")
    leaves = [leaf for leaf in _leaves(encoder) if leaf is not blocks]
    kinds = [short_name(leaf) for leaf in leaves]
    if not kinds or kinds[0] != "Linear" or "Linear" in kinds[1:]:
        raise ValueError(f"unsupported encoder layers {kinds}: expected Linear, norm, ReLU")
    extra = [k for k in kinds[1:] if k not in ("LayerNorm", "BatchNorm1d", "ReLU", "Identity")]
    if extra:
        raise ValueError(f"unsupported encoder layers {extra} in {kinds}")
    lin = tensors_of(leaves[0])
    weight, bias = lin["weight"].float(), lin.get("bias")
    bias = bias.float() if bias is not None else torch.zeros(weight.shape[0])
    parts: dict[str, Any] = {"weight": weight, "bias": bias, "layers": kinds, "norm": None}
    for leaf in leaves[1:]:
        t = tensors_of(leaf)
        if short_name(leaf) == "LayerNorm":
            c = weight.shape[0]
            parts["norm"] = {
                "weight": t["weight"].float() if "weight" in t else torch.ones(c),
                "bias": t["bias"].float() if "bias" in t else torch.zeros(c),
                "eps": float(attr(leaf, "eps", 1e-5)),
            }
        elif (
            short_name(leaf) == "BatchNorm1d"
        ):  # eval-mode BatchNorm is affine: fold it into Linear
            scale = t["weight"].float() / torch.sqrt(
                t["running_var"].float() + float(attr(leaf, "eps", 1e-5))
            )
            parts["weight"] = parts["weight"] * scale[:, None]
            parts["bias"] = (parts["bias"] - t["running_mean"].float()) * scale + t["bias"].float()
    if "ReLU" not in kinds:
        parts["layers"] = [*kinds, "ReLU (applied by the SAE)"]
    return parts


@torch.no_grad()
def fuse_archetypal_dictionary(
    w_cm: Tensor, c_md: Tensor, relax_cd: Tensor, multiplier: Tensor, delta: float
) -> Tensor:
    """overcomplete's eval dictionary: exp(m)·(rowstochastic(relu(W))·C + clip_δ(Λ)), by blocks."""
    c = w_cm.shape[0]
    out = torch.empty(c, c_md.shape[1])
    cm = c_md.float()
    scale = torch.exp(multiplier.float())
    for a in range(0, c, 2048):
        w = torch.relu(w_cm[a : a + 2048].float())
        w /= w.sum(dim=-1, keepdim=True) + 1e-8
        lam = relax_cd[a : a + 2048].float()
        lam = lam * torch.clamp(delta / lam.norm(dim=-1, keepdim=True), max=1)
        out[a : a + 2048] = (w @ cm + lam) * scale
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


class MissingThresholdError(ValueError):
    """A BatchTopK checkpoint whose threshold θ is known from nowhere: it cannot be encoded."""


CONFIG_JSON = "config.json"
# Keys of a config.json beside the checkpoint (top level, or one object deep) that give θ.
THRESHOLD_KEYS = ("threshold", "running_threshold")


def config_json_threshold(src: Path) -> float | None:
    """θ from the ``config.json`` that lies beside ``src`` (a model card's config), if any.

    A ``config.json`` without a threshold key gives nothing; two different values in one file,
    or a value that is not a finite number, are errors.
    """
    path = Path(src).parent / CONFIG_JSON
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} beside the checkpoint is not valid JSON: {exc}") from exc
    scopes = [raw] if isinstance(raw, dict) else []
    scopes += [v for v in (raw.values() if isinstance(raw, dict) else []) if isinstance(v, dict)]
    found = {scope[k] for scope in scopes for k in THRESHOLD_KEYS if scope.get(k) is not None}
    if not found:
        return None
    values = {_finite_threshold(v, str(path)) for v in found}
    if len(values) > 1:
        raise ValueError(f"{path} gives several thresholds {sorted(values)}: keep one")
    return values.pop()


def _finite_threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ValueError(f"{where}: the BatchTopK threshold must be a finite number, got {value!r}")
    return float(value)


def _resolve_threshold(
    sae: Placeholder, configured: float | None, beside: float | None, src_name: str
) -> tuple[Sparsity, float, dict[str, Any]]:
    """The sparsity of the pickled SAE, its θ and where θ came from.

    A BatchTopK SAE (its class, or a ``running_threshold`` attribute, even ``None``) takes θ
    from, in order: the run config (``sae.threshold``), ``config.json`` beside the checkpoint,
    the pickled ``running_threshold``. Without any it is an error: its ``top_k`` counts codes per
    *batch*, so a per-token TopK with that number would be a different model.
    """
    stored = attr(sae, "running_threshold")
    stored_theta = float(stored.float().reshape(())) if isinstance(stored, Tensor) else None
    top_k = attr(sae, "top_k")
    info: dict[str, Any] = {
        "source_training": attr(sae, "training"),
        "stored_threshold": stored_theta,
        "configured_threshold": configured,
        "config_json_threshold": beside,
    }
    batchtopk = "BatchTopK" in short_name(sae) or "running_threshold" in sae.__dict__
    if not batchtopk:
        if not isinstance(top_k, int):
            raise ValueError(f"{qualname(sae)}: neither a BatchTopK SAE nor an int top_k")
        if configured is not None:
            raise ValueError(
                f"sae.threshold = {configured} is set, but {src_name} holds a per-token TopK SAE "
                f"({qualname(sae)}, top_k={top_k}) that has no threshold: remove sae.threshold"
            )
        return "topk", float("nan"), {**info, "threshold_source": None}
    candidates = [
        ("run config sae.threshold", configured),
        (f"{CONFIG_JSON} beside the checkpoint", beside),
        ("pickled running_threshold", stored_theta),
    ]
    known = [(where, value) for where, value in candidates if value is not None]
    if not known:
        raise MissingThresholdError(
            f"{src_name} is a BatchTopK SAE ({qualname(sae)}) whose pickled running_threshold is "
            f"{stored!r} and no threshold θ is given: set sae.threshold in the run config (the "
            f"released RA-SAE-DINOv2-32k uses 0.829) or put the model card's {CONFIG_JSON} "
            f'(with a "threshold" key) beside the checkpoint. Its top_k={top_k} counts codes '
            "per batch, so it is not used as a per-token TopK."
        )
    source, theta = known[0]
    info["threshold_source"] = source
    if len({value for _, value in known}) > 1:
        info["threshold_disagreement"] = dict(known)
    return "batchtopk", float(theta), info


def _fused_dictionary(dictionary: Placeholder, info: dict[str, Any]) -> tuple[Tensor, float]:
    """The dictionary D (c × d) and its relaxation δ; where D came from goes into ``info``.

    An archetypal dictionary is fused from W, C, Relax and the multiplier, unless the pickle
    holds the fused copy its eval() uses (saved outside training); a plain one is taken as is.
    """
    dt = tensors_of(dictionary)
    fused = attr(dictionary, "_fused_dictionary")
    if {"W", "C", "Relax"} <= set(dt):
        delta = float(attr(dictionary, "delta", 1.0))
        mult = dt.get("multiplier", torch.zeros(()))
        d_cd = fuse_archetypal_dictionary(dt["W"], dt["C"], dt["Relax"], mult, delta)
        info.update(n_candidates=int(dt["C"].shape[0]), delta_relax=delta, multiplier=float(mult))
        if isinstance(fused, Tensor):
            info["stored_fused_max_abs_diff"] = float((fused.float() - d_cd).abs().max())
        if isinstance(fused, Tensor) and not attr(dictionary, "training", False):
            d_cd = fused.float().clone()
            info["dictionary_source"] = "stored _fused_dictionary (what the original eval uses)"
        elif isinstance(fused, Tensor):  # saved in training mode: eval() fuses anew
            info["dictionary_source"] = "fused from W, C, Relax, multiplier (saved in training)"
        else:
            info["dictionary_source"] = "fused from W, C, Relax, multiplier"
        return d_cd, delta
    if isinstance(fused, Tensor):
        info["dictionary_source"] = "stored _fused_dictionary"
        return fused.float().clone(), 0.0
    raise ValueError(f"unsupported dictionary {qualname(dictionary)}: no W/C/Relax or fused D")


def convert_released(
    root: Any,
    threshold: float | None = None,
    config_threshold: float | None = None,
    src_name: str = "the checkpoint",
) -> tuple[RelaxedArchetypalSAE, dict[str, Any]]:
    """Our fused-dictionary model from the placeholder graph of an overcomplete SAE.

    ``threshold`` is θ from the run config, ``config_threshold`` θ from a ``config.json`` beside
    the checkpoint (see :func:`_resolve_threshold` for the order).
    """
    sae = _unwrap(root)
    enc = _encoder_parts(children(sae)["encoder"])
    dictionary = children(sae).get("dictionary")
    if not isinstance(dictionary, Placeholder):
        raise ValueError(f"{qualname(sae)} has no dictionary module")
    info: dict[str, Any] = {
        "source_class": qualname(sae),
        "wrapper": qualname(root) if root is not sae else None,
        "dictionary_class": qualname(dictionary),
        "encoder_layers": enc["layers"],
    }
    d_cd, delta = _fused_dictionary(dictionary, info)
    c, d = d_cd.shape
    if tuple(enc["weight"].shape) != (c, d):
        raise ValueError(f"encoder {tuple(enc['weight'].shape)} does not match dictionary {(c, d)}")

    if threshold is not None:
        threshold = _finite_threshold(threshold, "sae.threshold")
    sparsity, theta, theta_info = _resolve_threshold(sae, threshold, config_threshold, src_name)
    top_k = attr(sae, "top_k")
    k = int(top_k) if isinstance(top_k, int) else 1
    norm = enc["norm"]
    cfg = RASAEConfig(
        d=d,
        n_concepts=c,
        sparsity=sparsity,
        k=max(1, min(k, c)),
        n_candidates=0,
        delta_relax=delta,
        encoder_layernorm=norm is not None,
        layernorm_eps=norm["eps"] if norm else 1e-5,
        threshold_momentum=float(attr(sae, "threshold_momentum", 0.9)),
    )
    model = RelaxedArchetypalSAE(cfg)
    state = {
        "encoder.weight": enc["weight"].contiguous(),
        "encoder.bias": enc["bias"].contiguous(),
        "D": d_cd.contiguous(),
        "threshold": torch.tensor(theta),
    }
    if norm is not None:
        state["norm.weight"], state["norm.bias"] = norm["weight"].clone(), norm["bias"].clone()
    model.load_state_dict(state, strict=True)
    model.eval()
    info.update(
        sparsity=sparsity,
        threshold=theta if sparsity == "batchtopk" else None,
        **theta_info,
        n_concepts=c,
        d=d,
        source_top_k=top_k,
    )
    return model, info


def import_released_checkpoint(
    src: Path,
    out_dir: Path,
    log: Callable[[str], None] | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Convert a released overcomplete checkpoint at ``src`` into our format at ``out_dir``.

    ``threshold`` is ``sae.threshold`` of the run config (θ of a BatchTopK SAE); a
    ``config.json`` beside ``src`` is read too. Returns the header written (θ and where it came
    from, the pickle's ``training`` flag and stored θ, c, d, source hash, conversion details).
    Raises :class:`MissingThresholdError` for a BatchTopK SAE whose θ is known from nowhere.
    """
    src = Path(src)
    t0 = time.perf_counter()
    root = read_torch_pickle(src)
    model, info = convert_released(root, threshold, config_json_threshold(src), src.name)
    digest = _sha256(src)
    version = f"released:{digest[:16]}"
    if info["sparsity"] == "batchtopk":  # the codes depend on θ as much as on the weights
        version += f":threshold={info['threshold']:.9g}"
    header = {
        "step": None,
        "data_version": version,
        "released": {**info, "source_file": src.name, "source_sha256": digest},
        "converted_seconds": round(time.perf_counter() - t0, 2),
    }
    written = save_sae(model, Path(out_dir), header)
    if log:
        log(
            f"imported {src.name}: c={info['n_concepts']} d={info['d']} θ={info['threshold']} "
            f"(from {info['threshold_source']})"
        )
        if "threshold_disagreement" in info:
            log(f"{src.name}: the thresholds known disagree: {info['threshold_disagreement']}")
    return written


def check_converted_threshold(header: dict[str, Any], threshold: float | None, where: str) -> None:
    """A converted SAE used with ``sae.threshold`` set must have that θ (it is not re-applied)."""
    if threshold is None:
        return
    cfg = header.get("config", {})
    theta = float(header.get("released", {}).get("threshold") or float("nan"))
    if cfg.get("sparsity") != "batchtopk":
        raise ValueError(f"sae.threshold = {threshold} is set but {where} is not a BatchTopK SAE")
    if not np.isclose(theta, threshold, rtol=0, atol=1e-7):
        raise ValueError(
            f"sae.threshold = {threshold} is set but {where} was converted with θ = {theta}: "
            "point sae.pretrained at the released .pth to convert it again, or drop sae.threshold"
        )


def _converted_already(src: Path, out_dir: Path, threshold: float | None) -> bool:
    """``out_dir`` holds a conversion of the same file (same SHA-256) with the same threshold
    inputs (``threshold``, a ``config.json`` beside it)."""
    try:
        released = read_header(out_dir).get("released", {})
    except (FileNotFoundError, ValueError):
        return False
    return bool(
        released.get("source_sha256") == _sha256(src)
        and released.get("configured_threshold") == threshold
        and released.get("config_json_threshold") == config_json_threshold(src)
    )


def install_pretrained(
    pretrained: Path,
    out_dir: Path,
    threshold: float | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[RelaxedArchetypalSAE, dict[str, Any]]:
    """``sae.pretrained`` into ``out_dir``, the one install path of given weights: a directory
    in our format is copied (its θ checked against ``threshold``); a released ``.pth`` is
    converted without executing it, unless ``out_dir`` already holds its conversion."""
    pretrained = Path(pretrained)
    if not pretrained.exists():
        raise FileNotFoundError(f"sae.pretrained {pretrained} does not exist")
    if pretrained.is_dir():
        model, header = load_sae(pretrained)
        check_converted_threshold(header, threshold, f"sae.pretrained {pretrained}")
        if pretrained.resolve() != Path(out_dir).resolve():
            save_sae(model, Path(out_dir), {k: v for k, v in header.items() if k != "config"})
    elif not _converted_already(pretrained, Path(out_dir), threshold):
        import_released_checkpoint(pretrained, Path(out_dir), log=log, threshold=threshold)
    return load_sae(Path(out_dir))
