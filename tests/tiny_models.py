"""Tiny, randomly initialised diffusers pipelines saved with ``save_pretrained``.

Shapes follow diffusers' own fast tests; tokenizers are built in memory, so nothing touches the
hub. Each ``save_tiny_*`` writes a directory that the real family modules load by path, exactly
as they would load a hub id. Outputs are noise; what the tests check is the code path, the
determinism and the lineage. All builders are seeded, so the same call writes the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    KandinskyCombinedPipeline,
    KandinskyPipeline,
    KandinskyPriorPipeline,
    KandinskyV22CombinedPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    PriorTransformer,
    StableDiffusionPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    VQModel,
)
from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    XLMRobertaTokenizer,
)

HIDDEN = 32  # text width, cross-attention width, image-embedding width of every tiny model
MAX_TOKENS = 16


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, as byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE with no merges: every character is one token."""
    chars = _byte_alphabet()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _unigram_pieces(specials: list[str]) -> list[tuple[str, float]]:
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,'-"
    pieces = [(s, 0.0) for s in specials]
    pieces += [("▁" + c, -2.0) for c in letters] + [(c, -3.0) for c in letters] + [("▁", -4.0)]
    return pieces


def t5_tokenizer() -> T5Tokenizer:
    return T5Tokenizer(
        vocab=_unigram_pieces(["<pad>", "</s>", "<unk>"]), extra_ids=0, model_max_length=MAX_TOKENS
    )


def xlm_roberta_tokenizer() -> XLMRobertaTokenizer:
    return XLMRobertaTokenizer(
        vocab=_unigram_pieces(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
        model_max_length=77,  # KandinskyPipeline pads to 77 whatever the tokenizer says
    )


def clip_text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=HIDDEN,
        projection_dim=HIDDEN,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        max_position_embeddings=MAX_TOKENS,
    )


def _sd_unet(seed: int, v_prediction: bool = False) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        norm_num_groups=2,
        # SD 2.x uses a per-head width and linear projections; exercise that shape.
        attention_head_dim=(2, 4) if v_prediction else 8,
        use_linear_projection=v_prediction,
    )


def _kl_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )


def save_tiny_sd(path: Path, v_prediction: bool = False, seed: int = 0) -> Path:
    """An SD 1.x-shaped pipeline (SD 2.x-shaped with ``v_prediction=True``), no safety checker."""
    unet = _sd_unet(seed, v_prediction)
    vae = _kl_vae(seed + 1)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(clip_text_config())
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def save_tiny_sd_unet(path: Path, seed: int = 7) -> Path:
    """A repo holding only ``unet/`` (like ``mhdang/dpo-sd1.5-text2image-v1``), other weights."""
    _sd_unet(seed).save_pretrained(path / "unet")
    return path


def save_tiny_pixart(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=HIDDEN,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    torch.manual_seed(seed + 1)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=128,
            d_model=HIDDEN,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    pipe = PixArtAlphaPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=text_encoder,
        vae=_kl_vae(seed + 2),
        transformer=transformer,
        scheduler=DDIMScheduler(steps_offset=1),
    )
    pipe.save_pretrained(path)
    return path


def _kandinsky_prior_parts(seed: int) -> dict[str, object]:
    torch.manual_seed(seed)
    prior = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=12,
        embedding_dim=HIDDEN,
        num_layers=1,
        num_embeddings=MAX_TOKENS,
    )
    # A random prior starts with clip_std = 0, which makes every image embedding zero.
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModelWithProjection(clip_text_config())
    torch.manual_seed(seed + 2)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=HIDDEN,
            image_size=28,
            projection_dim=HIDDEN,
            intermediate_size=37,
            num_attention_heads=4,
            num_channels=3,
            num_hidden_layers=2,
            patch_size=14,
        )
    )
    image_processor = CLIPImageProcessor(
        crop_size=28,
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
        size=28,
    )
    scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    return {
        "prior": prior,
        "image_encoder": image_encoder,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "scheduler": scheduler,
        "image_processor": image_processor,
    }


def _kandinsky_unet(seed: int, v21: bool) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        in_channels=4,
        out_channels=8,  # learned variance, as the released decoders
        addition_embed_type="text_image" if v21 else "image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(8, 16),
        layers_per_block=1,
        encoder_hid_dim=HIDDEN,
        encoder_hid_dim_type="text_image_proj" if v21 else "image_proj",
        cross_attention_dim=HIDDEN,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        norm_num_groups=4,
    )


def _movq(seed: int) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(
        block_out_channels=[32, 64],  # SpatialNorm groups by 32
        down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        in_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        out_channels=3,
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        vq_embed_dim=4,
    )


def _decoder_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
    )


def _mclip(seed: int) -> MultilingualCLIP:
    torch.manual_seed(seed)
    return MultilingualCLIP(
        MCLIPConfig(
            transformerDimSize=HIDDEN,
            imageDimSize=HIDDEN,
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=128,
            max_position_embeddings=80,  # 77 tokens after XLM-R's position offset of 2
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
    )


def save_tiny_kandinsky22(decoder_dir: Path, prior_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Kandinsky 2.2 as two repos, like ``kandinsky-2-2-prior`` + ``kandinsky-2-2-decoder``."""
    KandinskyV22PriorPipeline(**_kandinsky_prior_parts(seed)).save_pretrained(prior_dir)  # type: ignore[arg-type]
    KandinskyV22Pipeline(
        unet=_kandinsky_unet(seed + 10, v21=False),
        scheduler=_decoder_scheduler(),
        movq=_movq(seed + 11),
    ).save_pretrained(decoder_dir)
    return decoder_dir, prior_dir


def save_tiny_kandinsky21(decoder_dir: Path, prior_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Kandinsky 2.1 as two repos: a CLIP prior and an M-CLIP-conditioned decoder."""
    KandinskyPriorPipeline(**_kandinsky_prior_parts(seed)).save_pretrained(prior_dir)  # type: ignore[arg-type]
    KandinskyPipeline(
        text_encoder=_mclip(seed + 12),
        tokenizer=xlm_roberta_tokenizer(),
        unet=_kandinsky_unet(seed + 10, v21=True),
        scheduler=_decoder_scheduler(),
        movq=_movq(seed + 11),
    ).save_pretrained(decoder_dir)
    return decoder_dir, prior_dir


def _prior_as_combined(seed: int) -> dict[str, object]:
    return {f"prior_{name}": part for name, part in _kandinsky_prior_parts(seed).items()}


def save_tiny_kandinsky22_combined(path: Path, seed: int = 0) -> Path:
    """One directory holding prior and decoder, as ``AutoPipelineForText2Image`` loads it."""
    KandinskyV22CombinedPipeline(
        unet=_kandinsky_unet(seed + 10, v21=False),
        scheduler=_decoder_scheduler(),
        movq=_movq(seed + 11),
        **_prior_as_combined(seed),  # type: ignore[arg-type]
    ).save_pretrained(path)
    return path


def save_tiny_kandinsky21_combined(path: Path, seed: int = 0) -> Path:
    KandinskyCombinedPipeline(
        text_encoder=_mclip(seed + 12),
        tokenizer=xlm_roberta_tokenizer(),
        unet=_kandinsky_unet(seed + 10, v21=True),
        scheduler=_decoder_scheduler(),
        movq=_movq(seed + 11),
        **_prior_as_combined(seed),  # type: ignore[arg-type]
    ).save_pretrained(path)
    return path
