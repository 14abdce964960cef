"""The Relaxed Archetypal SAE: model, streaming trainer, checkpoints, encoding to concept codes.

A plain library (no Dagster): ``train_sae`` over feature row stores, ``save_sae`` / ``load_sae``
(safetensors + JSON header), ``encode_features_to_codes`` into a codes row store.
"""

from blindspot_assets.sae.checkpoint import load_sae, read_header, save_sae
from blindspot_assets.sae.config import RASAEConfig, TrainConfig
from blindspot_assets.sae.encode import (
    encode_features_to_codes,
    model_fingerprint,
    open_codes_store,
)
from blindspot_assets.sae.model import RelaxedArchetypalSAE
from blindspot_assets.sae.released import (
    MissingThresholdError,
    UnsafeCheckpointError,
    import_released_checkpoint,
    install_pretrained,
)
from blindspot_assets.sae.train import TrainResult, train_sae

__all__ = [
    "MissingThresholdError",
    "RASAEConfig",
    "RelaxedArchetypalSAE",
    "TrainConfig",
    "TrainResult",
    "UnsafeCheckpointError",
    "encode_features_to_codes",
    "open_codes_store",
    "import_released_checkpoint",
    "install_pretrained",
    "load_sae",
    "model_fingerprint",
    "read_header",
    "save_sae",
    "train_sae",
]
