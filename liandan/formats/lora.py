"""LoRA files: `.safetensors` in kohya's key layout (the one the WebUI's built-in Lora extension and kohya's
tools read), with `ss_*` training metadata and `modelspec.*`; and applying a file to our model at a weight
the way the WebUI does (previews, the self-test, tools).

Keys: `<prefix>.<part>`, the prefix naming a module (formats/lora_keys.py), the part one of
LoRA's `lora_down.weight`/`lora_up.weight`, LoHa's `hada_w1_a`..`hada_w2_b`, LoKr's `lokr_w1[_a|_b]`/
`lokr_w2[_a|_b]`, and `alpha` (the delta is scaled by alpha / rank) and DoRA's `dora_scale`. Every
metadata value is a string (safetensors' rule); JSON ones (`ss_network_args`, `ss_tag_frequency`,
`ss_dataset_dirs`) are JSON text.

The delta of a module is the WebUI's (network_lora/hada/lokr.py and network.py's `finalize_updown`): the
rebuilt weight difference times alpha / rank, DoRA's magnitude applied to the merged weight, times the
weight in `<lora:name:weight>`. Applying at weight 0 adds exact zeros: the model is bit-identical.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from liandan.atomic_files import atomic_path
from liandan.errors import FormatError

if TYPE_CHECKING:
    from liandan.models.bundle import ModelBundle

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
MODELSPEC_ARCHITECTURES = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sdxl": "stable-diffusion-xl-v1-base",
}
NETWORK_MODULES = {"lora": "networks.lora", "dora": "lycoris.kohya"}  # the rest: lycoris.kohya too


@dataclass
class LoraFile:
    """A LoRA file's tensors (`<prefix>.<part>`) and metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    def modules(self) -> dict[str, dict[str, torch.Tensor]]:
        """prefix -> {part: tensor}."""
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in self.tensors.items():
            prefix, _, part = key.partition(".")
            grouped.setdefault(prefix, {})[part] = tensor
        return grouped

    @property
    def family(self) -> str | None:
        """ "sd1", "sd2" or "sdxl" from the metadata (the WebUI's rule), else from the keys; None: unknown."""
        version = self.metadata.get("ss_base_model_version", "")
        if version.startswith("sdxl_"):
            return "sdxl"
        if self.metadata.get("ss_v2") == "True" or version.startswith("sd_v2"):
            return "sd2"
        if version.startswith("sd_v1"):
            return "sd1"
        if any(key.startswith(("lora_te1_", "lora_te2_")) for key in self.tensors):
            return "sdxl"
        return None

    def network_type(self) -> str:
        """ "lora", "loha", "lokr" or "dora" from the parts (LoCon is LoRA on convolutions too)."""
        parts = {part for module in self.modules().values() for part in module}
        if "dora_scale" in parts:
            return "dora"
        if "hada_w1_a" in parts:
            return "loha"
        if any(part.startswith("lokr_") for part in parts):
            return "lokr"
        return "lora"


def read_lora(path: Path) -> LoraFile:
    """A `.safetensors` LoRA; a file that is not one (truncated, another format, no tensors) is refused."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise FormatError(f"{path}: LoRA files are read as .safetensors, not {path.suffix!r}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{path} is not a readable LoRA .safetensors file ({e})") from e
    if not any(
        key.endswith((".lora_down.weight", ".hada_w1_a", ".lokr_w1", ".lokr_w1_a")) for key in tensors
    ):
        raise FormatError(f"{path} holds no LoRA/LyCORIS weights (no lora_down, hada_ or lokr_ keys)")
    return LoraFile(tensors, metadata)


def write_lora(path: Path, lora: LoraFile, precision: str = "fp16") -> Path:
    """Write atomically, floating tensors in `precision` ("fp32", "fp16", "bf16"), metadata in key order."""
    from safetensors.torch import save_file

    from liandan.models.saving import sort_safetensors_metadata

    dtype = PRECISIONS[precision]
    tensors = {
        key: (t.to(dtype) if t.is_floating_point() else t).detach().to("cpu").contiguous()
        for key, t in lora.tensors.items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(lora.metadata))
        sort_safetensors_metadata(tmp)
    return Path(path)


def network_metadata(
    network_type: str, rank: int, alpha: float, args: Mapping[str, object]
) -> dict[str, str]:
    """kohya's description of the network: module, dim, alpha and the network args (JSON)."""
    module = NETWORK_MODULES.get(network_type, "lycoris.kohya")
    return {
        "ss_network_module": module,
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps({key: str(value) for key, value in args.items()}),
    }


def model_metadata(family: str, prediction_type: str, name: str, width: int, height: int) -> dict[str, str]:
    """What the file is for: kohya's base model version and the modelspec fields."""
    import datetime as dt

    return {
        "ss_base_model_version": BASE_MODEL_VERSIONS[family],
        "ss_v2": str(family == "sd2"),
        "ss_resolution": f"({width}, {height})",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{MODELSPEC_ARCHITECTURES[family]}/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models"
        if family == "sdxl"
        else "diffusers",
        "modelspec.title": name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
    }


# --- the WebUI's delta ---------------------------------------------------------------------------------


def _rebuild(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    return up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)


def _kron(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    return torch.kron(w1, w2.contiguous())


def module_delta(parts: Mapping[str, torch.Tensor], weight: torch.Tensor, multiplier: float) -> torch.Tensor:
    """The change the WebUI makes to a module's `weight` for these parts at `multiplier`, in float32."""
    w = {k: v.to(weight.device, torch.float32) for k, v in parts.items()}
    if "lora_up.weight" in w:
        if "lora_mid.weight" in w:
            raise FormatError("LoRA modules with a Tucker middle (lora_mid) are not supported")
        updown, rank = _rebuild(w["lora_up.weight"], w["lora_down.weight"]), w["lora_down.weight"].shape[0]
    elif "hada_w1_a" in w:
        if "hada_t1" in w:
            raise FormatError("LoHa modules with Tucker factors (hada_t1) are not supported")
        updown = _rebuild(w["hada_w1_a"], w["hada_w1_b"]) * _rebuild(w["hada_w2_a"], w["hada_w2_b"])
        rank = w["hada_w1_b"].shape[0]
    elif any(k.startswith("lokr_") for k in w):
        if "lokr_t2" in w:
            raise FormatError("LoKr modules with a Tucker factor (lokr_t2) are not supported")
        w1 = w["lokr_w1"] if "lokr_w1" in w else w["lokr_w1_a"] @ w["lokr_w1_b"]
        w2 = w["lokr_w2"] if "lokr_w2" in w else _rebuild(w["lokr_w2_a"], w["lokr_w2_b"])
        if "lokr_w2" not in w and weight.dim() == 4:
            w2 = w2.reshape(w2.shape[0], -1, *weight.shape[2:])
        updown = _kron(w1, w2)
        rank = next((w[k].shape[0] for k in ("lokr_w2_b", "lokr_w1_b") if k in w), None)
    else:
        raise FormatError(f"no LoRA, LoHa or LoKr weights among {sorted(parts)}")
    updown = updown.reshape(weight.shape)
    if "alpha" in w and rank is not None:
        updown = updown * (float(w["alpha"]) / rank)
    if "dora_scale" in w:
        original = weight.float()
        merged = original + updown
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(merged.shape[1], *[1] * (merged.dim() - 1)).transpose(0, 1)
        updown = merged * (w["dora_scale"] / norm) - original
    return updown * multiplier


@dataclass
class AppliedLora:
    """A file applied to a model: the layers it changed, the keys the WebUI would skip."""

    changed: list[str]
    skipped: list[str]
    _backups: list[tuple[torch.nn.Parameter, torch.Tensor]] = field(default_factory=list, repr=False)

    def restore(self) -> None:
        with torch.no_grad():
            for param, backup in reversed(self._backups):
                param.copy_(backup)
        self._backups.clear()


def apply_lora(bundle: ModelBundle, lora: LoraFile, multiplier: float, *, backup: bool = True) -> AppliedLora:
    """Add the file's deltas to the model's weights in place, the WebUI's way: each key prefix finds its
    layer as the WebUI's loader does; keys it would not find (or an incomplete packed attention) are skipped
    and listed. With `backup` the original weights are kept for `restore()`."""
    from liandan.formats.lora_keys import bundle_modules, unapplied_keys, webui_layer, webui_layers
    from liandan.models.model_spec import spec_of_bundle

    modules = bundle_modules(bundle)
    layers = webui_layers(spec_of_bundle(bundle), modules)
    grouped = lora.modules()
    skipped = unapplied_keys(list(grouped), layers)
    applied = AppliedLora([], skipped)
    with torch.no_grad():
        for prefix, parts in grouped.items():
            match = webui_layer(prefix, layers) if prefix not in skipped else None
            if match is None:
                continue
            sd_key, layer = match
            targets = layers[layer]
            if len(targets) == 3:  # a packed attention's q/k/v: the one named by the key
                if sd_key == layer:
                    continue
                targets = (targets["qkv".index(sd_key[-6])],)
            component, path = targets[0]
            param = modules[component].get_submodule(path).weight
            delta = module_delta(parts, param, multiplier)
            if backup:
                applied._backups.append((param, param.detach().clone()))
            param.copy_((param.float() + delta).to(param.dtype))
            applied.changed.append(sd_key)
    return applied


@contextlib.contextmanager
def lora_applied(bundle: ModelBundle, lora: LoraFile, multiplier: float) -> Iterator[AppliedLora]:
    """`apply_lora` for the length of a `with` block; the weights are put back however it ends."""
    applied = apply_lora(bundle, lora, multiplier)
    try:
        yield applied
    finally:
        applied.restore()
