"""LoRA and the LyCORIS family injected into a model, built on lycoris-lora's module classes.

Each targeted Linear/Conv2d gets one lycoris module (LoCon for "lora", "locon" and "dora" (LoCon with
weight decomposition), LoHa for "loha", LoKr for "lokr") that wraps its forward; the module's own state dict
is the file's (`lora_down.weight`, `hada_w1_a`, `lokr_w1`, `alpha`, `dora_scale`, ...) under our kohya key
prefix, so saving is `state_dict()`. We build the modules one by one rather than through lycoris'
`create_lycoris`, whose presets are class-level globals and whose names are not the WebUI's.

What is targeted (`NetworkSpec.targets`): "attention" = the attention projections (UNet to_q/to_k/to_v/
to_out.0, text encoders q/k/v/out_proj); "transformer" adds the rest of each transformer block's linears
(feed-forward, proj_in/proj_out; text encoders' MLP). Types with convolutions ("locon", "loha", "lokr") add
the ResNet blocks' and resamplers' convolutions at `conv_rank` (0: none). A module whose key the WebUI
cannot map is never targeted (it would be trained for nothing). `block_ranks` sets other ranks for UNet
blocks named by their LDM layer ("input_blocks_4=8, middle_block=16, output_blocks=2"; the longest matching
name wins; 0 leaves them out).

DoRA's magnitude is per input column (lycoris' `wd_on_out=False`): that is the `dora_scale` the WebUI's
loader applies. `close()` puts every forward back exactly as it was; the model may be the host's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from liandan.errors import ConfigError

if TYPE_CHECKING:
    from liandan.jobs import NetworkSpec
    from liandan.models.bundle import ModelBundle

LYCORIS_CLASSES = {
    "lora": "LoConModule",
    "locon": "LoConModule",
    "dora": "LoConModule",
    "loha": "LohaModule",
    "lokr": "LokrModule",
}
CONV_TYPES = ("locon", "loha", "lokr")
INSTALL_HINT = "pip install -U lycoris-lora"
_ATTENTION_LEAVES = {"to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj"}
_BLOCK_RANK = re.compile(r"\s*([A-Za-z0-9_]+)\s*=\s*(\d+)\s*")


def lycoris_class(network_type: str) -> type[torch.nn.Module]:
    """The lycoris module class of a network type; a missing library or class is named, with the fix."""
    try:
        import lycoris.modules as lycoris_modules
    except ImportError as e:
        raise ConfigError(
            f"network type {network_type!r} needs lycoris-lora, not installed: {INSTALL_HINT}"
        ) from e
    cls = getattr(lycoris_modules, LYCORIS_CLASSES[network_type], None)
    if cls is None:
        raise ConfigError(
            f"network type {network_type!r} needs lycoris' {LYCORIS_CLASSES[network_type]}, which the "
            f"installed lycoris-lora lacks: {INSTALL_HINT}"
        )
    return cls


def parse_block_ranks(text: str) -> dict[str, int]:
    """ "input_blocks_4=8, middle_block=16" -> {"input_blocks_4": 8, "middle_block": 16}."""
    ranks: dict[str, int] = {}
    for part in filter(str.strip, text.split(",")):
        match = _BLOCK_RANK.fullmatch(part)
        if not match:
            raise ConfigError(
                f"block_ranks entry {part.strip()!r} is not NAME=RANK; expected e.g. "
                "'input_blocks_4=8, middle_block=16, output_blocks=2' (LDM block names; rank 0 leaves "
                "them out)"
            )
        ranks[match[1]] = int(match[2])
    return ranks


def _block_rank(layer: str, ranks: dict[str, int], default: int) -> int:
    """The rank of the longest block name `layer` (a WebUI layer name) starts with, else `default`."""
    block = layer.removeprefix("diffusion_model_")
    matches = [name for name in ranks if block == name or block.startswith(name + "_")]
    return ranks[max(matches, key=len)] if matches else default


def _is_target(component: str, path: str, module: torch.nn.Module, spec: NetworkSpec) -> str | None:
    """ "linear" or "conv" when the module is one the spec trains, else None."""
    leaf = path.rsplit(".", 2)
    leaf_name = ".".join(leaf[-2:]) if path.endswith("to_out.0") else leaf[-1]
    one_by_one = isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
    if not isinstance(module, torch.nn.Linear) and not isinstance(module, torch.nn.Conv2d):
        return None
    if component != "unet":
        inside = ".self_attn." in path or (spec.targets == "transformer" and ".mlp." in path)
        return "linear" if inside and isinstance(module, torch.nn.Linear) else None
    if ".attentions." in path or "transformer_blocks" in path:
        if leaf_name in _ATTENTION_LEAVES:
            return "linear"
        if spec.targets == "transformer" and (isinstance(module, torch.nn.Linear) or one_by_one):
            return "linear"
        return None
    convolutional = spec.type in CONV_TYPES and spec.conv_rank > 0
    if convolutional and any(part in path for part in (".resnets.", ".downsamplers.", ".upsamplers.")):
        return "conv" if isinstance(module, torch.nn.Conv2d) and not one_by_one else "linear"
    return None


def _layer_size(module: torch.nn.Module) -> int:
    """The largest rank a factorisation of the module's weight can have."""
    weight = module.weight
    return min(weight.shape[0], weight[0].numel())


class LoraNetwork(torch.nn.Module):
    """The injected modules of one network, keyed by their file key prefix (see the module docstring)."""

    def __init__(self, bundle: ModelBundle, spec: NetworkSpec, *, text_encoders: bool) -> None:
        from liandan.formats.lora_keys import bundle_modules, module_names, webui_layer, webui_layers
        from liandan.models.model_spec import spec_of_bundle

        super().__init__()
        cls = lycoris_class(spec.type)
        model_spec = spec_of_bundle(bundle)
        modules = bundle_modules(bundle)
        names = module_names(model_spec, modules)
        layers = webui_layers(model_spec, modules)
        ranks = parse_block_ranks(spec.block_ranks)
        components = [
            "unet",
            *([f"text_encoder_{i}" for i in range(len(bundle.text_encoders))] * text_encoders),
        ]
        self.networks = torch.nn.ModuleDict()
        self.components: dict[str, str] = {}  # key prefix -> component
        for component in components:
            for path, module in modules[component].named_modules():
                kind = _is_target(component, path, module, spec)
                key = names.get((component, path))
                if kind is None or key is None:
                    continue
                match = webui_layer(key, layers)
                if match is None:  # a module the WebUI would not find: training it would do nothing
                    continue
                rank, alpha = (
                    (spec.rank, spec.alpha) if kind == "linear" else (spec.conv_rank, spec.conv_alpha)
                )
                if component == "unet":
                    rank = _block_rank(match[1], ranks, rank)
                if rank == 0:
                    continue
                if spec.type != "lokr" and rank > _layer_size(module):
                    raise ConfigError(
                        f"rank {rank} is larger than layer {key} allows ({_layer_size(module)}, its weight "
                        f"{tuple(module.weight.shape)}); choose a rank of at most {_layer_size(module)}"
                    )
                self.networks[key] = self._make(cls, key, module, rank, alpha, spec)
                self.components[key] = component
        if not self.networks:
            raise ConfigError(
                f"the {spec.type} network found no layer to train in this model (targets {spec.targets!r})"
            )
        self.applied = False

    @staticmethod
    def _make(
        cls: type[torch.nn.Module],
        key: str,
        module: torch.nn.Module,
        rank: int,
        alpha: float,
        spec: NetworkSpec,
    ) -> torch.nn.Module:
        # Bypass: the frozen layer's output plus the network's own (x -> down -> up for LoRA, where
        # `dropout` applies as in kohya's LoRA; LoKr's Kronecker factors applied in turn, never multiplied
        # out); lycoris' default adds the difference to the full weight and takes it off again each call.
        # DoRA rescales the merged weight itself, so it has no bypass.
        extra: dict[str, Any] = {"bypass_mode": True}
        if spec.type == "dora":
            extra = {"weight_decompose": True, "wd_on_out": False}
        elif spec.type == "lokr":
            extra["factor"] = spec.lokr_factor
        lyco = cls(
            key,
            module,
            1.0,
            rank,
            alpha,
            spec.dropout,
            spec.rank_dropout,
            spec.module_dropout,
            False,
            **extra,
        )
        return lyco.to(module.weight.device)

    def apply(self) -> None:
        """Wrap every targeted module's forward (the network is on)."""
        if not self.applied:
            for lyco in self.networks.values():
                lyco.apply_to()
            self.applied = True

    def remove(self) -> None:
        """Put every wrapped forward back: the model computes exactly what it did before `apply`."""
        if self.applied:
            for lyco in reversed(list(self.networks.values())):
                lyco.restore()
                lyco.org_module[0].__dict__.pop("forward", None)  # lycoris leaves the original, bound
            self.applied = False

    def component_parameters(self, component_prefix: str) -> list[torch.nn.Parameter]:
        """The trainable tensors of the modules in components starting with `component_prefix`."""
        return [
            p
            for key, lyco in self.networks.items()
            if self.components[key].startswith(component_prefix)
            for p in lyco.parameters()
        ]

    def file_state(self) -> dict[str, torch.Tensor]:
        """The tensors under the file's keys (`<prefix>.lora_down.weight`, `<prefix>.alpha`, ...)."""
        return {k: v.detach() for k, v in self.networks.state_dict().items()}
