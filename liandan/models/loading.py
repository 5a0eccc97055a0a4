"""Load a ModelBundle from a single-file checkpoint (.safetensors / .ckpt, LDM layout) or a diffusers folder.

Memory: modules are built on the meta device and each parameter is assigned the tensor read for it (a
lazy safetensors handle, or an mmap'd torch.load), so the weights are never held twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from liandan.errors import CheckpointError
from liandan.formats.a1111_pickle import load_error_summary, torch_load_weights_only
from liandan.models.bundle import Family, ModelBundle
from liandan.models.detect import EXPECTED, detect_family
from liandan.models.ldm_layout import TEXT_PREFIXES, VAE_PREFIX, key_plan, to_module_tensors
from liandan.models.ldm_yaml import configs_from_yaml, read_yaml
from liandan.models.model_spec import ModelSpec, assemble_bundle, assign_tensor, build_modules, standard_spec

if TYPE_CHECKING:
    import torch

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


class TensorSource(Protocol):
    shapes: dict[str, tuple[int, ...]]

    def get(self, key: str) -> torch.Tensor: ...


class _SafetensorsSource:
    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118

    def get(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)


class _DictSource:
    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state
        self.shapes = {key: tuple(t.shape) for key, t in state.items() if hasattr(t, "shape")}

    def get(self, key: str) -> torch.Tensor:
        return self._state[key]


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        state = torch_load_weights_only(path, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):  # legacy (pre-zip) files cannot be mmap'd
            raise
        state = torch_load_weights_only(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: holds a {type(state).__name__}, not a state dict; expected {EXPECTED}"
        )
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


@contextmanager
def open_checkpoint(path: Path) -> Iterator[TensorSource]:
    """Key -> shape of a checkpoint file, with lazy tensor access; CheckpointError if it cannot be read."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; expected {EXPECTED}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as handle:
                yield _SafetensorsSource(handle)
                return
        yield _DictSource(_torch_state(path))
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable or truncated ({load_error_summary(error)})") from error


def _infer_text_config(source: TensorSource, prefix: str, layout: str, base: dict) -> dict:
    """A text encoder's config from its weight shapes (heads: 64 channels each, as CLIP-L/OpenCLIP have)."""
    shapes = source.shapes
    if layout == "hf_clip":
        embed = shapes[f"{prefix}text_model.embeddings.token_embedding.weight"]
        positions = shapes[f"{prefix}text_model.embeddings.position_embedding.weight"][0]
        layer_key = f"{prefix}text_model.encoder.layers."
        fc1 = shapes[f"{layer_key}0.mlp.fc1.weight"]
    else:
        embed = shapes[f"{prefix}token_embedding.weight"]
        positions = shapes[f"{prefix}positional_embedding"][0]
        layer_key = f"{prefix}transformer.resblocks."
        fc1 = shapes[f"{layer_key}0.mlp.c_fc.weight"]
    layers = len({key[len(layer_key) :].split(".")[0] for key in shapes if key.startswith(layer_key)})
    hidden = embed[1]
    projection = shapes.get(f"{prefix}text_projection", (hidden, hidden))[-1]
    return {
        **base,
        "vocab_size": embed[0],
        "hidden_size": hidden,
        "intermediate_size": fc1[0],
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": positions,
        "projection_dim": projection,
    }


def _clip_folder_config(version: str | None, checkpoint: Path) -> dict | None:
    """config.json of the yaml's `version` CLIP folder, looked up from the WebUI root (the folder above
    models/) or any folder above the checkpoint, as A1111 resolves it against its working directory."""
    if not version:
        return None
    for root in checkpoint.resolve().parents:
        config = root / version / "config.json"
        if config.is_file():
            return json.loads(config.read_text(encoding="utf-8"))
    return None


def _spec_for(path: Path, source: TensorSource, family: Family, in_channels: int) -> tuple[ModelSpec, dict]:
    spec = standard_spec(family)
    info: dict[str, str] = {}
    yaml_path = path.with_suffix(".yaml")
    if yaml_path.is_file():
        found = configs_from_yaml(read_yaml(yaml_path))
        info["yaml"] = str(yaml_path)
        spec.unet.update(found["unet"])
        spec.vae.update(found["vae"])
        spec.scheduler.update(found["scheduler"])
        spec = spec.with_prediction(found["prediction_type"])
        folder_config = _clip_folder_config(found["clip_version"], path)
        for index, te in enumerate(spec.text_encoders):
            if folder_config and te.layout == "hf_clip" and index == 0:
                keep = set(te.config) | {"hidden_act", "num_attention_heads", "layer_norm_eps"}
                te.config = {k: v for k, v in folder_config.items() if k in keep}
                info["clip_config"] = found["clip_version"]
            else:
                te.config = _infer_text_config(source, TEXT_PREFIXES[(family, index)], te.layout, te.config)
    spec.unet["in_channels"] = in_channels
    return spec, info


def _is_v_prediction_sd2(unet: torch.nn.Module) -> bool:
    """A1111's `is_using_v_parameterization_for_sd2`: at t=999 an eps model's output stays near its input
    of 0.5, a v model's falls far below it."""
    import torch

    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)
    sample = torch.full((1, unet.config.in_channels, 8, 8), 0.5)
    dtype = next(unet.parameters()).dtype
    with torch.no_grad():
        unet.float()
        out = unet(sample, torch.tensor([999]), context).sample
        unet.to(dtype)
    return (out - sample[:, : out.shape[1]]).mean().item() < -1


def load_bundle(
    path: Path, *, device: str = "cpu", dtype: torch.dtype | None = None, allow_inpainting: bool = False
) -> ModelBundle:
    """The ModelBundle of a checkpoint file or diffusers folder. `short_hash` is left for
    `bundle_short_hash` to compute on demand (hashing a 2-7 GB file takes seconds)."""
    path = Path(path)
    if path.is_dir():
        from liandan.models.diffusers_folder import load_diffusers_folder

        return load_diffusers_folder(path, device=device, dtype=dtype)
    with open_checkpoint(path) as source:
        detected = detect_family(path, source.shapes, allow_inpainting=allow_inpainting)
        spec, info = _spec_for(path, source, detected.family, detected.in_channels)
        text_encoders, unet, vae = build_modules(spec, empty=True)
        modules = {
            "unet": unet,
            "vae": vae,
            **{f"text_encoder_{i}": te for i, te in enumerate(text_encoders)},
        }
        plan = key_plan(spec, modules)
        for key_map in plan:
            _fill(path, source, modules[key_map.component], key_map, device, dtype)
        planned = {key_map.ldm_key for key_map in plan}
        extras = {
            key: source.get(key).clone()
            for key in source.shapes
            if key not in planned and not key.startswith("model_ema.")
        }
    if detected.family == "sd2" and "yaml" not in info and _is_v_prediction_sd2(unet):
        spec = spec.with_prediction("v_prediction")
        unet.register_to_config(upcast_attention=True)
        for module in unet.modules():  # the flag is read per attention layer, set when it was built
            if hasattr(module, "upcast_attention"):
                module.upcast_attention = True
    info["family_probe"] = f"{detected.family}, {spec.prediction_type}"
    return assemble_bundle(
        spec, text_encoders, unet, vae, name=path.stem, source=path, info=info, ldm_extras=extras
    )


def _fill(path: Path, source: TensorSource, module: Any, key_map: Any, device: str, dtype: Any) -> None:
    if key_map.ldm_key not in source.shapes:
        raise CheckpointError(
            f"{path}: missing {key_map.ldm_key}; the file is damaged or of a non-standard shape "
            f"(put its .yaml beside it, named {path.with_suffix('.yaml').name})"
        )
    tensors = to_module_tensors(key_map, source.get(key_map.ldm_key))
    for name, tensor in zip(key_map.names, tensors):
        expected = tuple(module.get_parameter(name).shape)
        if tuple(tensor.shape) != expected:
            raise CheckpointError(
                f"{path}: {key_map.ldm_key} has shape {tuple(tensor.shape)}, expected {expected}; a model of "
                f"non-standard shape needs its .yaml beside it ({path.with_suffix('.yaml').name})"
            )
        if tensor.is_floating_point() and dtype is not None:
            tensor = tensor.to(dtype)
        assign_tensor(module, name, tensor.to(device))


@functools.lru_cache(maxsize=64)
def _sha256_prefix(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def checkpoint_short_hash(path: Path) -> str:
    """A1111's `shorthash`: the first 10 hex of the file's sha256 (memoised per path, size and mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256_prefix(path, stat.st_size, stat.st_mtime_ns)


def bundle_short_hash(bundle: ModelBundle) -> str | None:
    """The bundle's short hash, computed from its source file on first ask (None for in-memory models)."""
    if bundle.short_hash is None and bundle.source is not None and bundle.source.is_file():
        bundle.short_hash = checkpoint_short_hash(bundle.source)
    return bundle.short_hash


class _PrefixedSource:
    """A VAE file's keys as they sit in a checkpoint: A1111's VAE files drop the `first_stage_model.`."""

    def __init__(self, source: TensorSource, prefix: str) -> None:
        self._source, self._prefix = source, prefix
        self.shapes = {prefix + key: shape for key, shape in source.shapes.items()}

    def get(self, key: str) -> torch.Tensor:
        return self._source.get(key.removeprefix(self._prefix))


def load_vae_file(bundle: ModelBundle, path: Path) -> None:
    """Replace the bundle's VAE weights by those of a VAE file (A1111's models/VAE: .safetensors, .pt or
    .ckpt, with or without the `first_stage_model.` prefix); CheckpointError for a file of other shapes."""
    from liandan.models.model_spec import spec_of_bundle

    vae = bundle.vae
    device, dtype = vae.device, vae.dtype
    with open_checkpoint(path) as source:
        prefixed = any(key.startswith(VAE_PREFIX) for key in source.shapes)
        keys: TensorSource = source if prefixed else _PrefixedSource(source, VAE_PREFIX)
        modules = {"unet": bundle.unet, "vae": vae}
        modules.update({f"text_encoder_{i}": te for i, te in enumerate(bundle.text_encoders)})
        plan = [m for m in key_plan(spec_of_bundle(bundle), modules) if m.component == "vae"]
        for key_map in plan:
            _fill(path, keys, vae, key_map, str(device), dtype)
    bundle.info["vae"] = str(path)
    bundle.info["vae_hash"] = checkpoint_short_hash(path)
