"""Aesthetic gradients: steer a prompt's conditioning toward an aesthetic embedding at generation time.

For each prompt, a copy of every text encoder is trained for `steps` Adam steps to raise the cosine
similarity between the prompt's projected pooled feature (final layer norm, first EOS, the text projection
of `clip_vision.text_projection`) and the embedding's image feature for that encoder (SDXL: CLIP-L toward
the ViT-L feature, OpenCLIP-G toward the bigG one). The prompt is then encoded by the adapted copies with
our A1111-style `PromptEncoder` (chunks, emphasis, CLIP skip, SDXL's pooled output), and each token's
conditioning is blended with the plain one: `(1 - w) * plain + w * adapted`, or spherically (`slerp`).
An aesthetic `text` first rotates the target toward that text's feature by `slerp_angle` (away from it when
`text_is_negative`). Weight 0 or steps 0 returns the plain conditioning object itself.

The copies are made once per conditioner and reset from the model's weights for each prompt; the adapted
conditioning is kept in an LRU cache per (prompt, CLIP skip, adaptation settings, embeddings in use), so a
repeated prompt, or the same one at another weight, costs one blend. Nothing is read from disk per prompt.
The negative prompt is left plain: guidance then pushes toward the aesthetic instead of partly cancelling it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from liandan.errors import FormatError
from liandan.formats.aesthetic import SINGLE, AestheticEmbedding
from liandan.models.clip_vision import FEATURE_KEYS, text_projection
from liandan.models.conditioning import Conditioning, EmbeddingVectors, PromptEncoder

if TYPE_CHECKING:
    from pathlib import Path

    from liandan.jobs import AestheticSettings
    from liandan.models.bundle import ModelBundle

CACHE_SIZE = 64


def slerp(low: torch.Tensor, high: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation along the last dimension (magnitudes interpolate with it); where the two
    are (anti)parallel it falls back to the linear blend."""
    dot = (torch.nn.functional.normalize(low, dim=-1) * torch.nn.functional.normalize(high, dim=-1)).sum(-1)
    omega = torch.acos(dot.clamp(-1.0, 1.0))[..., None]
    sin_omega = torch.sin(omega)
    spherical = (torch.sin((1 - t) * omega) * low + torch.sin(t * omega) * high) / sin_omega.clamp_min(1e-12)
    return torch.where(sin_omega > 1e-6, spherical, (1 - t) * low + t * high)


def blend(plain: torch.Tensor, adapted: torch.Tensor, settings: AestheticSettings) -> torch.Tensor:
    adapted = adapted.to(device=plain.device, dtype=torch.float32)
    base = plain.float()
    mixed = (
        slerp(base, adapted, settings.weight)
        if settings.slerp
        else torch.lerp(base, adapted, settings.weight)
    )
    return mixed.to(plain.dtype)


def embedding_targets(
    embedding: AestheticEmbedding, bundle: ModelBundle, projections: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """The embedding's feature for each text encoder, checked against the width each projection gives."""
    keys = FEATURE_KEYS[bundle.family]
    features = embedding.features
    if SINGLE in features and len(keys) == 1:
        features = {keys[0]: features[SINGLE]}
    widths = [int(projection.shape[0]) for projection in projections]
    if set(features) != set(keys):
        have = ", ".join(f"{key or 'one feature'} {value.shape[-1]} wide" for key, value in features.items())
        need = " + ".join(f"{key} {width} wide" for key, width in zip(keys, widths))
        raise FormatError(
            f"{embedding.describe()} holds {have}; this {bundle.family} model's CLIP needs {need}"
        )
    targets = []
    for key, width in zip(keys, widths):
        found = int(features[key].shape[-1])
        if found != width:
            raise FormatError(
                f"aesthetic embedding {embedding.name!r} is for a CLIP {found} wide ({key}); "
                f"the loaded {bundle.family} model's CLIP is {width} wide"
            )
        targets.append(features[key].float())
    return targets


class AestheticConditioner:
    """One model's text encoders and one aesthetic embedding: adapted conditioning per prompt, cached.

    `projections[i]` maps text encoder i's pooled output to the embedding's feature space
    ([feature width, text width], `clip_vision.text_projection`)."""

    def __init__(
        self,
        bundle: ModelBundle,
        embedding: AestheticEmbedding,
        projections: Sequence[torch.Tensor],
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.bundle = bundle
        self.embedding = embedding
        self.targets = embedding_targets(embedding, bundle, projections)
        self.projections = [projection.float() for projection in projections]
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, Conditioning] = OrderedDict()
        self._copies: list[torch.nn.Module] | None = None
        self.adaptations = 0  # prompts adapted (cache misses), for tests and the bench

    # ---- the public entry ----

    def apply(
        self,
        prompts: Sequence[str],
        plain: Conditioning,
        settings: AestheticSettings,
        clip_skip: int = 1,
        embeddings: Mapping[str, EmbeddingVectors] | None = None,
    ) -> Conditioning:
        """`plain` (the conditioning of `prompts`, one row each) blended with each prompt's adapted one.
        Chunks a prompt does not fill (a longer prompt in the batch) stay plain."""
        if not settings.active:
            return plain
        context = plain.context.clone()
        pooled = None if plain.pooled is None else plain.pooled.clone()
        for row, prompt in enumerate(prompts):
            adapted = self.adapted(prompt, settings, clip_skip, embeddings)
            length = min(adapted.context.shape[1], context.shape[1])
            context[row, :length] = blend(context[row, :length], adapted.context[0, :length], settings)
            if pooled is not None and adapted.pooled is not None:
                pooled[row] = blend(pooled[row], adapted.pooled[0], settings)
        return Conditioning(context, pooled)

    def adapted(
        self,
        prompt: str,
        settings: AestheticSettings,
        clip_skip: int = 1,
        embeddings: Mapping[str, EmbeddingVectors] | None = None,
    ) -> Conditioning:
        """The conditioning of `prompt` from text encoders adapted toward the embedding (cached)."""
        # the blend (weight, slerp) is applied afterwards: it is no part of the key
        adaptation = (settings.steps, settings.learn_rate, settings.text, settings.text_is_negative,
                      settings.slerp_angle)  # fmt: skip
        key = (prompt, clip_skip, adaptation, tuple(sorted(embeddings or {})))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        result = self._adapt(prompt, settings, clip_skip, embeddings)
        self._cache[key] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    # ---- the adaptation ----

    def _fresh_copies(self) -> list[torch.nn.Module]:
        """Float32 copies of the text encoders with the model's current weights (made once, then reset)."""
        if self._copies is None:
            self._copies = [copy.deepcopy(encoder).float().eval() for encoder in self.bundle.text_encoders]
        for working, encoder in zip(self._copies, self.bundle.text_encoders):
            working.load_state_dict(encoder.state_dict())
            working.requires_grad_(True)
        return self._copies

    def _features(self, index: int, encoder: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Unit-length projected pooled features [rows, D] of `input_ids` through `encoder`."""
        last = encoder(input_ids=input_ids).last_hidden_state  # after the final layer norm
        first_eos = (input_ids == self.bundle.tokenizers[index].eos_token_id).int().argmax(dim=1)
        pooled = last[torch.arange(last.shape[0], device=last.device), first_eos]
        projection = self.projections[index].to(pooled.device)
        return torch.nn.functional.normalize(pooled @ projection.T, dim=-1)

    def _target(self, index: int, encoder: torch.nn.Module, settings: AestheticSettings) -> torch.Tensor:
        target = self.targets[index]
        if not settings.text:
            return target
        text_encoder = PromptEncoder(self.bundle)
        ids = text_encoder.input_ids(index, text_encoder.tokenize(settings.text).chunks[:1])
        with torch.no_grad():
            text = self._features(index, encoder, ids).cpu()
        if settings.text_is_negative:
            text = torch.nn.functional.normalize(target - text, dim=-1)
        return torch.nn.functional.normalize(slerp(target, text, settings.slerp_angle), dim=-1)

    def _adapt(
        self,
        prompt: str,
        settings: AestheticSettings,
        clip_skip: int,
        embeddings: Mapping[str, EmbeddingVectors] | None,
    ) -> Conditioning:
        copies = self._fresh_copies()
        encoder = PromptEncoder(self.bundle, clip_skip=clip_skip)
        chunks = encoder.tokenize(prompt, embeddings).chunks
        with torch.enable_grad():
            for index, working in enumerate(copies):
                input_ids = encoder.input_ids(index, chunks)
                target = self._target(index, working, settings).to(input_ids.device)
                optimizer = torch.optim.Adam(working.parameters(), lr=settings.learn_rate)
                for _ in range(settings.steps):
                    loss = -(self._features(index, working, input_ids) @ target.T).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                working.requires_grad_(False)
        adapted = dataclasses.replace(self.bundle, text_encoders=list(copies))
        with torch.no_grad():
            result = PromptEncoder(adapted, clip_skip=clip_skip).encode([prompt], embeddings)
        self.adaptations += 1
        return Conditioning(
            result.context.detach(), None if result.pooled is None else result.pooled.detach()
        )


def make_conditioner(
    bundle: ModelBundle, embedding: AestheticEmbedding, models_dir: Path, allow_download: bool = True
) -> AestheticConditioner:
    """The conditioner of `embedding` on `bundle`, with each text encoder's projection (`clip_vision`)."""
    count = len(bundle.text_encoders)
    projections = [text_projection(bundle, index, models_dir, allow_download) for index in range(count)]
    return AestheticConditioner(bundle, embedding, projections)


# the infotext labels (A1111's extra_generation_params) of each setting: the aesthetic-gradients
# extension's own, so its images' parameters paste into ours and back
INFOTEXT_LABELS: dict[str, str] = {
    "learn_rate": "Aesthetic LR",
    "weight": "Aesthetic weight",
    "steps": "Aesthetic steps",
    "slerp": "Aesthetic slerp",
    "text": "Aesthetic text",
    "text_is_negative": "Aesthetic text negative",
    "slerp_angle": "Aesthetic slerp angle",
}
EMBEDDING_LABEL = "Aesthetic embedding"
NO_AESTHETIC = "None"  # the embedding choice that turns the section off
# the WebUI Script's arguments, in the order of its controls (and of `alwayson_scripts` "args" over the API)
SCRIPT_ARGS = (
    "embedding",
    "weight",
    "steps",
    "learn_rate",
    "slerp",
    "slerp_angle",
    "text",
    "text_is_negative",
)


def infotext_fields(embedding_name: str, settings: AestheticSettings) -> dict[str, object]:
    """The infotext fields of an active aesthetic setting (none when it changes nothing; no text fields
    without a text)."""
    if not settings.active:
        return {}
    values = settings.to_dict()
    skipped = () if settings.text else ("text", "text_is_negative")
    fields = {label: values[key] for key, label in INFOTEXT_LABELS.items() if key not in skipped}
    return {EMBEDDING_LABEL: embedding_name, **fields}
