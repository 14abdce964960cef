"""Caption images with an image-text-to-text model through transformers.

One code path loads a hub id (``Salesforce/blip-image-captioning-large``,
``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``, ``Qwen/Qwen2-VL-2B-Instruct``) and a local folder
written by ``save_pretrained``: ``AutoProcessor`` + ``AutoModelForImageTextToText``, each with
``from_pretrained(model_id, revision=...)``. Two kinds of checkpoint are handled:

- a **captioning** model (its processor has no chat template, e.g. BLIP): the prompt is a
  caption prefix (default ``"a picture of"``) that the model continues; the prefix is stripped
  from the answer;
- a **chat** VLM (its processor has a chat template, e.g. LLaVA-OneVision, Qwen2-VL): the prompt
  is an instruction sent as one user turn with the image; only the generated tokens are kept.

Decoding is greedy (``do_sample=False``), so a caption is a function of the image, the prompt
and the checkpoint version, which the ``concept_names`` rows record.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from blindspot_assets.checkpoint_versions import MissingInput, resolve_checkpoint
from blindspot_assets.config import LabelsSpec
from blindspot_assets.devices import choose_device
from blindspot_assets.generators.diffusers_pipeline import choose_dtype

# A caption prefix for captioning models; an instruction for chat VLMs.
CAPTION_PROMPT = "a picture of"
CHAT_PROMPT = (
    "What object, material, pattern or colour fills this image? "
    "Answer with a short noun phrase of at most four words."
)


class Labeller(Protocol):
    """What ``labels.naming`` needs of a labeller: captions for a batch of images, and what to
    record beside them. Any model (or a test double) with these fields names concepts."""

    @property
    def model_id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def prompt(self) -> str: ...

    def caption(self, images: list[Image.Image]) -> list[str]: ...


@dataclass
class Captioner:
    """A loaded image-text-to-text checkpoint and the prompt it is asked with."""

    model: Any
    processor: Any
    spec: LabelsSpec
    device: str
    dtype: torch.dtype
    version: str  # resolved commit, or sha256: content hash of a local folder
    prompt: str
    chat: bool  # the processor has a chat template: the prompt is an instruction

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def lineage(self) -> dict[str, Any]:
        return {
            "labeller_id": self.spec.model_id,
            "labeller_revision": self.spec.revision,
            "labeller_version": self.version,
            "labeller_class": type(self.model).__name__,
            "prompt": self.prompt,
            "chat_template": self.chat,
            "max_new_tokens": self.spec.max_new_tokens,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
        }

    def _texts(self, n: int) -> list[str]:
        if not self.chat:
            return [self.prompt] * n
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self.prompt}],
            }
        ]
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return [str(text)] * n

    @torch.inference_mode()
    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, greedy, ``batch_size`` images per forward pass."""
        out: list[str] = []
        step = self.spec.batch_size
        for a in range(0, len(images), step):
            batch = [im.convert("RGB") for im in images[a : a + step]]
            inputs = self.processor(
                images=batch, text=self._texts(len(batch)), return_tensors="pt", padding=True
            )
            inputs = {
                k: v.to(self.device, self.dtype if v.is_floating_point() else None)
                if isinstance(v, torch.Tensor)
                else v
                for k, v in inputs.items()
            }
            ids = self.model.generate(
                **inputs, max_new_tokens=self.spec.max_new_tokens, do_sample=False
            )
            prompt_ids = inputs.get("input_ids")
            if isinstance(prompt_ids, torch.Tensor) and _starts_with(ids, prompt_ids):
                ids = ids[:, prompt_ids.shape[1] :]  # a decoder-only model echoes its input
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            out += [strip_prompt(str(t), self.prompt) for t in texts]
        return out


def _starts_with(ids: torch.Tensor, prefix: torch.Tensor) -> bool:
    n = prefix.shape[1]
    return bool(ids.shape[1] >= n and torch.equal(ids[:, :n].cpu(), prefix.cpu()))


def strip_prompt(text: str, prompt: str) -> str:
    """The answer alone: whitespace trimmed, a caption prefix echoed by the model removed."""
    text = " ".join(text.split())
    head = " ".join(prompt.split()).lower()
    if head and text.lower().startswith(head):
        text = text[len(head) :]
    return text.strip(" :.,;")


def load_captioner(spec: LabelsSpec) -> Captioner:
    """Load ``spec.model_id`` (hub id or local folder) at ``spec.revision``.

    The version is ``checkpoint_versions.resolve_checkpoint``'s: a local folder's content hash,
    else the commit the revision resolves to (from the hub, or from the local cache when
    offline).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if not spec.enabled:
        raise ValueError("labels.model_id is 'none': no labeller to load")
    device = choose_device(spec.device)
    dtype, _ = choose_dtype(spec.dtype, device)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torchvision.*")
            processor = AutoProcessor.from_pretrained(spec.model_id, revision=spec.revision)
            model = AutoModelForImageTextToText.from_pretrained(
                spec.model_id, revision=spec.revision, dtype=dtype
            )
    except OSError as exc:  # not downloadable here: the config may still be right
        raise MissingInput(
            f"labels.model_id: {spec.model_id}@{spec.revision} could not be loaded "
            f"({str(exc)[:300]}); fix: fetch it into the Hugging Face cache, point "
            "labels.model_id at a local folder, or set labels.model_id: none"
        ) from exc
    model = model.to(device).eval()
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # batched generation of a decoder-only model
    chat = bool(getattr(processor, "chat_template", None))
    prompt = spec.prompt if spec.prompt is not None else (CHAT_PROMPT if chat else CAPTION_PROMPT)
    version = resolve_checkpoint(spec.model_id, spec.revision).data_version
    return Captioner(model, processor, spec, device, dtype, version, prompt, chat)
