"""Single-file checkpoints we train: the `modelspec.*` metadata (Stability AI's model spec 1.0.0, which the
WebUI's metadata viewer, kohya and ComfyUI read) saying what the file is and what was trained, and reading
it back.

Architecture names are the spec's: `stable-diffusion-v1`, `stable-diffusion-v2-512` (epsilon),
`stable-diffusion-v2-768-v` (v-prediction), `stable-diffusion-xl-v1-base`; an adapter (LoRA) appends
`/lora`. What was trained goes in `modelspec.description` for people and `liandan.trained` (comma-separated
parts: unet, text_encoder, text_encoder_2) for tools.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from liandan.errors import CheckpointError
from liandan.models.bundle import ModelBundle

IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"


def architecture(bundle: ModelBundle) -> str:
    if bundle.family == "sdxl":
        return "stable-diffusion-xl-v1-base"
    if bundle.family == "sd2":
        return (
            "stable-diffusion-v2-768-v"
            if bundle.prediction_type == "v_prediction"
            else "stable-diffusion-v2-512"
        )
    return "stable-diffusion-v1"


def modelspec_metadata(
    bundle: ModelBundle,
    *,
    title: str,
    resolution: tuple[int, int],
    trained: Sequence[str],
    description: str,
    trigger_phrases: Sequence[str] = (),
    adapter: str = "",
    date: dt.datetime | None = None,
) -> dict[str, str]:
    """The `modelspec.*` keys of a file trained on `bundle` (width × height `resolution`)."""
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture(bundle) + (f"/{adapter}" if adapter else ""),
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.description": description,
        "modelspec.date": (date or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "v" if bundle.prediction_type == "v_prediction" else "epsilon",
        "liandan.trained": ",".join(trained),
    }
    if trigger_phrases:
        metadata["modelspec.trigger_phrase"] = ", ".join(trigger_phrases)
    return metadata


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a .safetensors file ({} for a .ckpt, which holds none)."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from e
