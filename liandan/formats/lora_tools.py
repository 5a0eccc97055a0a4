"""LoRA tools: merge a LoRA into a checkpoint at a weight, extract a LoRA from the difference of two
checkpoints, resize a LoRA to a lower rank, describe one (on the command line: formats/lora_command.py).

Extracting and resizing are truncated SVDs (torch.linalg.svd) of each layer's weight difference: the first
`rank` singular vectors, with alpha = rank (scale 1), so the file's delta is the best rank-`rank`
approximation of the difference. Convolutions with a kernel over 1x1 get `conv_rank` (0: left out).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from liandan.errors import ConfigError, FormatError
from liandan.formats.lora import (
    PRECISIONS,
    LoraFile,
    apply_lora,
    model_metadata,
    network_metadata,
    read_lora,
    write_lora,
)

if TYPE_CHECKING:
    from liandan.models.bundle import ModelBundle

FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


def check_family(lora: LoraFile, lora_name: str, bundle: ModelBundle) -> None:
    """Refuse a LoRA made for another model family, naming both."""
    if lora.family is not None and lora.family != bundle.family:
        raise FormatError(
            f"LoRA {lora_name} is for {FAMILY_NAMES[lora.family]} and the checkpoint {bundle.name} is "
            f"{FAMILY_NAMES[bundle.family]}: a LoRA works only on the family it was trained for"
        )


@dataclass
class MergeResult:
    path: Path
    changed: int
    skipped: list[str]


def merge_lora(
    lora_path: Path, checkpoint: Path, out: Path, weight: float = 1.0, precision: str = "fp32"
) -> MergeResult:
    """Write `checkpoint` with the LoRA's deltas at `weight` added (the WebUI's `<lora:name:weight>`)."""
    from liandan.models.loading import load_bundle
    from liandan.models.saving import save_checkpoint

    lora = read_lora(lora_path)
    bundle = load_bundle(checkpoint)
    check_family(lora, lora_path.name, bundle)
    applied = apply_lora(bundle, lora, weight, backup=False)
    if not applied.changed:
        raise FormatError(f"no key of LoRA {lora_path.name} matches a layer of {checkpoint.name}")
    save_checkpoint(bundle, out, dtype=PRECISIONS[precision])
    return MergeResult(out, len(applied.changed), applied.skipped)


def _low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of the best rank-`rank` approximation of a [out, in, (k, k)] delta, in the file's shapes."""
    matrix = delta.reshape(delta.shape[0], -1).float()
    rank = min(rank, *matrix.shape)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    if delta.dim() == 4:
        return up.reshape(*up.shape, 1, 1), down.reshape(rank, *delta.shape[1:])
    return up, down


def _add_module(tensors: dict[str, torch.Tensor], key: str, up: torch.Tensor, down: torch.Tensor) -> None:
    tensors[f"{key}.lora_up.weight"] = up.contiguous()
    tensors[f"{key}.lora_down.weight"] = down.contiguous()
    tensors[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))


def extract_lora(
    base: Path, tuned: Path, out: Path, rank: int, conv_rank: int = 0, precision: str = "fp16"
) -> Path:
    """A LoRA of every Linear/Conv2d layer (UNet, text encoders) where `tuned` differs from `base`."""
    from liandan.formats.lora_keys import bundle_modules, module_names, webui_layer, webui_layers
    from liandan.models.loading import load_bundle
    from liandan.models.model_spec import spec_of_bundle

    if rank < 1 or conv_rank < 0:
        raise ConfigError(
            f"rank {rank} / conv rank {conv_rank}: the rank must be at least 1, the conv rank 0 or more"
        )
    before, after = load_bundle(base), load_bundle(tuned)
    if before.family != after.family:
        raise FormatError(
            f"{base.name} is {FAMILY_NAMES[before.family]} and {tuned.name} is {FAMILY_NAMES[after.family]}: "
            "a LoRA is the difference of two checkpoints of one family"
        )
    spec, modules, tuned_modules = spec_of_bundle(before), bundle_modules(before), bundle_modules(after)
    layers = webui_layers(spec, modules)
    tensors: dict[str, torch.Tensor] = {}
    for (component, path), key in module_names(spec, modules).items():
        module = modules[component].get_submodule(path)
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d) or webui_layer(key, layers) is None:
            continue
        layer_rank = conv_rank if module.weight.dim() == 4 and module.weight.shape[-1] > 1 else rank
        delta = tuned_modules[component].get_submodule(path).weight.float() - module.weight.float()
        if layer_rank == 0 or not delta.any():
            continue
        _add_module(tensors, key, *_low_rank(delta, layer_rank))
    if not tensors:
        raise ConfigError(f"{tuned.name} has the same weights as {base.name}: there is nothing to extract")
    metadata = {
        **model_metadata(before.family, before.prediction_type, out.stem, 0, 0),
        **network_metadata("lora", rank, float(rank), {"conv_dim": conv_rank, "extracted_from": tuned.name}),
        "ss_output_name": out.stem,
    }
    return write_lora(out, LoraFile(tensors, metadata), precision)


def resize_lora(lora_path: Path, out: Path, rank: int, precision: str = "fp16") -> Path:
    """The LoRA at a lower rank: each module's delta (alpha/rank included) re-factorised by SVD."""
    lora = read_lora(lora_path)
    kind = lora.network_type()
    if kind != "lora":
        raise FormatError(f"{lora_path.name} is a {kind} network: only LoRA/LoCon (lora_up/lora_down) resize")
    if rank < 1:
        raise ConfigError(f"rank {rank}: the new rank must be at least 1")
    tensors: dict[str, torch.Tensor] = {}
    for key, parts in lora.modules().items():
        up, down = parts["lora_up.weight"].float(), parts["lora_down.weight"].float()
        scale = float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0
        delta = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)) * scale
        _add_module(tensors, key, *_low_rank(delta.reshape(up.shape[0], *down.shape[1:]), rank))
    metadata = {**lora.metadata, "ss_network_dim": str(rank), "ss_network_alpha": str(float(rank))}
    return write_lora(out, LoraFile(tensors, metadata), precision)


def describe_lora(lora_path: Path) -> dict[str, object]:
    """What a LoRA file is: type, family, modules and their ranks, metadata (JSON values decoded)."""
    lora = read_lora(lora_path)
    modules = lora.modules()
    ranks = sorted(
        {int(parts["lora_down.weight"].shape[0]) for parts in modules.values() if "lora_down.weight" in parts}
    )
    metadata: dict[str, object] = {}
    for key, value in sorted(lora.metadata.items()):
        try:
            metadata[key] = json.loads(value) if value[:1] in "{[" else value
        except json.JSONDecodeError:
            metadata[key] = value
    return {
        "file": str(lora_path),
        "type": lora.network_type(),
        "family": lora.family,
        "modules": len(modules),
        "text_encoder_modules": sum(1 for key in modules if key.startswith("lora_te")),
        "ranks": ranks,
        "metadata": metadata,
    }
