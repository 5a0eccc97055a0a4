"""Save a ModelBundle back to one single-file checkpoint in A1111's LDM layout, atomically.

Keys the loader kept aside (`bundle.ldm_extras`) are written back, so a loaded file round-trips to the same
key set and tensors; a bundle built in memory gets LDM's noise-schedule buffers regenerated instead. When the
architecture is not a released one, a same-named .yaml is written beside the file, as A1111 needs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from liandan.atomic_files import atomic_path, write_text_atomic
from liandan.errors import CheckpointError
from liandan.formats.a1111_pickle import save_pt_a1111
from liandan.models.bundle import ModelBundle
from liandan.models.ldm_layout import TEXT_PREFIXES, key_plan, to_ldm_tensor
from liandan.models.ldm_yaml import yaml_text
from liandan.models.model_spec import ModelSpec, spec_of_bundle, standard_spec

if TYPE_CHECKING:
    import torch

# fields that decide whether A1111's config guess (the released architecture) fits the weights
_SHAPE_FIELDS = {
    "unet": (
        "block_out_channels",
        "layers_per_block",
        "cross_attention_dim",
        "attention_head_dim",
        "transformer_layers_per_block",
        "down_block_types",
        "use_linear_projection",
    ),
    "vae": ("block_out_channels", "layers_per_block", "latent_channels"),
    "text": ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads"),
}


def _normal(value: object) -> object:
    return list(value) if isinstance(value, (list, tuple)) else value


def is_released_architecture(spec: ModelSpec) -> bool:
    standard = standard_spec(spec.family)
    pairs = [(spec.unet, standard.unet, "unet"), (spec.vae, standard.vae, "vae")]
    pairs += [(te.config, ref.config, "text") for te, ref in zip(spec.text_encoders, standard.text_encoders)]
    for mine, ref, kind in pairs:
        for name in _SHAPE_FIELDS[kind]:
            default = 1 if name == "transformer_layers_per_block" else None
            if _normal(mine.get(name, default)) != _normal(ref.get(name, default)):
                return False
    return True


def ldm_schedule_buffers(beta_start: float, beta_end: float, steps: int) -> dict[str, torch.Tensor]:
    """LatentDiffusion's `register_schedule` buffers for its "linear" (= diffusers "scaled_linear") betas."""
    import numpy as np
    import torch

    betas = (torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2).numpy()
    alphas = 1.0 - betas
    cumprod = np.cumprod(alphas, axis=0)
    cumprod_prev = np.append(1.0, cumprod[:-1])
    posterior_variance = betas * (1.0 - cumprod_prev) / (1.0 - cumprod)
    arrays = {
        "betas": betas,
        "alphas_cumprod": cumprod,
        "alphas_cumprod_prev": cumprod_prev,
        "sqrt_alphas_cumprod": np.sqrt(cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / cumprod - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(cumprod_prev) / (1.0 - cumprod),
        "posterior_mean_coef2": (1.0 - cumprod_prev) * np.sqrt(alphas) / (1.0 - cumprod),
    }
    return {name: torch.tensor(array, dtype=torch.float32) for name, array in arrays.items()}


def _regenerated_extras(bundle: ModelBundle, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """What released checkpoints carry besides weights: LDM's schedule buffers (SD1/SD2; sgm has none) and
    the CLIP-L position ids (a saved buffer in the transformers that A1111 pins)."""
    import torch

    extras: dict[str, torch.Tensor] = {}
    if bundle.family != "sdxl":
        config = bundle.noise_scheduler.config
        extras = ldm_schedule_buffers(config.beta_start, config.beta_end, config.num_train_timesteps)
    for index, te in enumerate(spec.text_encoders):
        if te.layout == "hf_clip":
            key = f"{TEXT_PREFIXES[(spec.family, index)]}text_model.embeddings.position_ids"
            extras[key] = torch.arange(te.config["max_position_embeddings"]).unsqueeze(0)
    return extras


def ldm_state_dict(bundle: ModelBundle, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The bundle's weights under LDM keys (CPU, contiguous; floating tensors cast to `dtype` if given)."""

    spec = spec_of_bundle(bundle)
    modules = {"unet": bundle.unet, "vae": bundle.vae}
    modules.update({f"text_encoder_{i}": te for i, te in enumerate(bundle.text_encoders)})
    params = {name: dict(module.named_parameters()) for name, module in modules.items()}
    state: dict[str, torch.Tensor] = {}
    for key_map in key_plan(spec, modules):
        tensors = [params[key_map.component][name].detach() for name in key_map.names]
        state[key_map.ldm_key] = to_ldm_tensor(key_map, tensors)
    extras = dict(bundle.ldm_extras) or _regenerated_extras(bundle, spec)
    state.update(extras)
    for key, tensor in state.items():
        tensor = tensor.to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous()
    return state


def sort_safetensors_metadata(path: Path) -> None:
    """Put the header's metadata in key order, in place. safetensors writes it from a hash map, in an order
    that changes from run to run, so the same weights got another file hash (A1111's model hash) each time.
    Reordering keys keeps the header's length, so the tensor data stays where it is."""
    with path.open("r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) <= size:  # always equal in practice; never risk moving the data
            f.seek(8)
            f.write(text.ljust(size, b" "))


def save_checkpoint(
    bundle: ModelBundle,
    path: Path,
    *,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `bundle` to `path` (.safetensors, or .ckpt as {"state_dict": ...} that A1111's safe unpickler
    loads; a .ckpt has no metadata) with floating weights in `dtype` (None: as they are); a .yaml beside it:
    a copy of the one the model was loaded with, else one made when the architecture is not a released
    one. Returns `path`."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".ckpt"):
        raise CheckpointError(f"{path}: a checkpoint is saved as .safetensors or .ckpt, not {path.suffix!r}")
    state = ldm_state_dict(bundle, dtype=dtype)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", **(metadata or {})})
            sort_safetensors_metadata(tmp)
    else:
        save_pt_a1111({"state_dict": state}, path)
    spec = spec_of_bundle(bundle)
    yaml_path = path.with_suffix(".yaml")
    source_yaml = Path(bundle.info.get("yaml", ""))
    if source_yaml.is_file():  # the model's own (its CLIP folder, its v-prediction): A1111 needs the same
        write_text_atomic(yaml_path, source_yaml.read_text(encoding="utf-8"))
    elif not is_released_architecture(spec):
        texts = [te.config for te in spec.text_encoders]
        write_text_atomic(yaml_path, yaml_text(spec.family, spec.unet, spec.vae, spec.scheduler, texts))
    return path
