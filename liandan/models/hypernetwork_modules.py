"""Hypernetwork modules as A1111 v1.10.1 builds them, so state_dict keys match its `.pt` files exactly.

A hypernetwork holds, per attention input width, a pair of small residual MLPs that transform the K and V
inputs of every attention layer of that width (cross-attention context and self-attention hidden states):
`x + mlp(x) * strength`. Layer order inside `mlp` (and so the Sequential indices in the file) is A1111's:
for each step Linear, then the activation (not after the last Linear unless `activate_output`), then
LayerNorm (if enabled, after the last Linear too), then Dropout (if its probability is > 0).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from liandan.errors import ConfigError

if TYPE_CHECKING:
    from liandan.models.bundle import Family

WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
MAX_DEPTH_MULTIPLIER = 16.0  # a sanity bound on "1, 2, 1"-style multipliers, far above anything useful


def activation_classes() -> dict[str, type[nn.Module] | None]:
    """A1111's activation names: its explicit ones ("swish" is Hardswish) plus every class of
    torch.nn.modules.activation, lower-cased. "linear" means no activation."""
    found: dict[str, type[nn.Module] | None] = {
        "linear": None,
        "relu": nn.ReLU,
        "leakyrelu": nn.LeakyReLU,
        "elu": nn.ELU,
        "swish": nn.Hardswish,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass):
        if cls.__module__ == "torch.nn.modules.activation":
            found.setdefault(name.lower(), cls)
    return found


def default_sizes(family: Family) -> tuple[int, ...]:
    """Widths of the attention inputs the model really has: text context plus self-attention channels.

    SD1 is A1111's UI default (768, 320, 640, 1280); SD2's context is 1024; SDXL has attention only at 640
    and 1280 channels, with a 2048-wide (CLIP-L + OpenCLIP-G) context.
    """
    sizes = {"sd1": (768, 320, 640, 1280), "sd2": (1024, 320, 640, 1280), "sdxl": (2048, 640, 1280)}
    if family not in sizes:
        raise ConfigError(f"unknown model family {family!r}; expected one of {sorted(sizes)}")
    return sizes[family]


def parse_float_list(text: str | Sequence[float], what: str) -> list[float]:
    """'1, 2, 1' (as the UI sends it) or a list of numbers -> floats; ConfigError naming what was wrong."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    values = []
    for item in items:
        try:
            values.append(float(item))
        except (TypeError, ValueError):
            raise ConfigError(f"{what} {text!r}: {item!r} is not a number") from None
    return values


def parse_layer_structure(text: str | Sequence[float]) -> list[float]:
    """Validate a layer structure like A1111's '1, 2, 1': at least two sizes, starting and ending with 1."""
    values = parse_float_list(text, "layer structure")
    if len(values) < 2 or values[0] != 1 or values[-1] != 1:
        raise ConfigError(
            f"layer structure {text!r}: must start and end with 1 and have at least two entries, "
            "e.g. '1, 2, 1'"
        )
    bad = [v for v in values if not 0 < v <= MAX_DEPTH_MULTIPLIER]
    if bad:
        raise ConfigError(
            f"layer structure {text!r}: {bad[0]} is out of range; each multiplier must be > 0 and "
            f"<= {MAX_DEPTH_MULTIPLIER:g}"
        )
    return values


def parse_dropout_structure(
    text: str | Sequence[float], layer_structure: Sequence[float], use_dropout: bool, last_layer_dropout: bool
) -> list[float]:
    """The dropout probability after each layer. Empty text means A1111's legacy default for the structure:
    `[0] + [0.3] * (n - 3) + [0.3 if last_layer_dropout else 0] + [0]`; no dropout at all when not used."""
    n = len(layer_structure)
    if not use_dropout or n < 3:  # with no hidden layer there is nothing to drop out between
        return [0.0] * n
    if isinstance(text, str) and not text.strip():
        return [0.0] + [0.3] * (n - 3) + [0.3 if last_layer_dropout else 0.0] + [0.0]
    values = parse_float_list(text, "dropout structure")
    if len(values) != n:
        raise ConfigError(
            f"dropout structure {text!r} has {len(values)} entries; the layer structure has {n}, one per size"
        )
    bad = [v for v in values if not 0 <= v < 1]
    if bad:
        raise ConfigError(f"dropout structure {text!r}: {bad[0]} is not a probability in [0, 1)")
    if values[0] != 0 or values[-1] != 0:
        raise ConfigError(f"dropout structure {text!r}: the first and last entries must be 0")
    return values


def check_activation(name: str | None) -> None:
    if name is not None and name not in activation_classes():
        raise ConfigError(
            f"unknown hypernetwork activation {name!r}; valid: {', '.join(sorted(activation_classes()))}"
        )


def check_sizes(sizes: Iterable[int], model_widths: Iterable[int]) -> None:
    """ConfigError for a module size the model has no attention input of (it would never be used)."""
    sizes, widths = list(sizes), sorted(set(model_widths))
    if not sizes:
        raise ConfigError(f"no hypernetwork sizes selected; this model's attention widths are {widths}")
    missing = [s for s in sizes if s not in widths]
    if missing:
        raise ConfigError(
            f"hypernetwork sizes {missing} do not exist in this model; its attention widths are {widths}"
        )


class HypernetworkModule(nn.Module):
    """One residual MLP `x + linear(x) * multiplier`; the multiplier applies only in eval mode (A1111)."""

    def __init__(
        self,
        dim: int,
        layer_structure: Sequence[float],
        activation: str | None = "linear",
        weight_init: str = "Normal",
        add_layer_norm: bool = False,
        activate_output: bool = False,
        dropout_structure: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        layer_structure = parse_layer_structure(layer_structure)
        check_activation(activation)
        if weight_init not in WEIGHT_INITS:
            raise ConfigError(f"unknown weight init {weight_init!r}; valid: {', '.join(WEIGHT_INITS)}")
        if dropout_structure is not None and len(dropout_structure) != len(layer_structure):
            raise ConfigError(
                f"dropout structure {list(dropout_structure)} does not match layer structure "
                f"{list(layer_structure)} in length"
            )
        self.multiplier = 1.0
        activation_cls = activation_classes().get(activation or "linear")
        last = len(layer_structure) - 2
        layers: list[nn.Module] = []
        for i in range(len(layer_structure) - 1):
            width_out = int(dim * layer_structure[i + 1])
            layers.append(nn.Linear(int(dim * layer_structure[i]), width_out))
            if activation_cls is not None and (i < last or activate_output):
                layers.append(activation_cls())
            if add_layer_norm:
                layers.append(nn.LayerNorm(width_out))
            if dropout_structure is not None and dropout_structure[i + 1] > 0:
                layers.append(nn.Dropout(p=float(dropout_structure[i + 1])))
        self.linear = nn.Sequential(*layers)
        self._init_weights(weight_init, activation)

    def _init_weights(self, weight_init: str, activation: str | None) -> None:
        nonlinearity = "leaky_relu" if activation == "leakyrelu" else "relu"
        for layer in self.linear:
            if not isinstance(layer, nn.Linear | nn.LayerNorm):
                continue
            weight, bias = layer.weight.data, layer.bias.data
            # A1111 draws LayerNorm affines from N(0, 0.01) too, whatever the chosen init.
            if weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
                nn.init.normal_(weight, mean=0.0, std=0.01)
                nn.init.zeros_(bias)
                continue
            if weight_init == "XavierUniform":
                nn.init.xavier_uniform_(weight)
            elif weight_init == "XavierNormal":
                nn.init.xavier_normal_(weight)
            elif weight_init == "KaimingUniform":
                nn.init.kaiming_uniform_(weight, nonlinearity=nonlinearity)
            else:
                nn.init.kaiming_normal_(weight, nonlinearity=nonlinearity)
            nn.init.zeros_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x) * (self.multiplier if not self.training else 1.0)


class Hypernetwork(nn.Module):
    """K/V module pairs keyed by width, plus the metadata A1111 keeps in the file.

    Attention hooks (liandan.models.attention_hooks) call `kv_modules(width)` with the width of an attention
    layer's K/V input and add `f(x) * strength`; `strength` is the `<hypernet:name:strength>` multiplier.
    `layer_structure` and `dropout_structure` keep the values as read from a file so they write back the same.
    """

    def __init__(
        self,
        name: str,
        sizes: Iterable[int],
        layer_structure: Sequence[float],
        activation: str | None = "linear",
        weight_init: str = "Normal",
        add_layer_norm: bool = False,
        activate_output: bool = False,
        use_dropout: bool = False,
        dropout_structure: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.layer_structure = list(layer_structure)
        self.activation = activation
        self.weight_init = weight_init
        self.add_layer_norm = add_layer_norm
        self.activate_output = activate_output
        self.use_dropout = use_dropout
        self.dropout_structure = (
            list(dropout_structure) if dropout_structure is not None else [0] * len(self.layer_structure)
        )
        self.step = 0
        self.sd_checkpoint: str | None = None
        self.sd_checkpoint_name: str | None = None
        self.optional_info: str | None = None
        self._strength = 1.0

        def make(width: int) -> HypernetworkModule:
            return HypernetworkModule(
                width,
                self.layer_structure,
                activation,
                weight_init,
                add_layer_norm,
                activate_output,
                self.dropout_structure,
            )

        self.pairs = nn.ModuleDict({str(w): nn.ModuleList([make(w), make(w)]) for w in sizes})
        self.eval()

    @property
    def sizes(self) -> list[int]:
        return [int(w) for w in self.pairs]

    @property
    def last_layer_dropout(self) -> bool:
        """What A1111 writes as `last_layer_dropout`: whether the layer before the output drops out."""
        return self.dropout_structure[-2] != 0

    @property
    def strength(self) -> float:
        """The multiplier the attention hooks apply; 1 while training, as A1111 trains at full strength."""
        return 1.0 if self.training else self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = float(value)
        for module in self.modules():
            if isinstance(module, HypernetworkModule):
                module.multiplier = self._strength

    def pair(self, width: int) -> tuple[HypernetworkModule, HypernetworkModule] | None:
        """The (k, v) residual modules of one width, or None."""
        if str(width) not in self.pairs:
            return None
        k_module, v_module = self.pairs[str(width)]
        return k_module, v_module

    def kv_modules(self, width: int) -> tuple[nn.Module, nn.Module] | None:
        """The KVTransform interface of liandan.models.attention_hooks: the (k, v) MLPs `f`, without the
        residual; the hook computes `x + f(x) * strength`."""
        pair = self.pair(width)
        return (pair[0].linear, pair[1].linear) if pair is not None else None

    def forward(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_input, v_input) for an attention input; unchanged when there is no module of its width."""
        pair = self.pair(context.shape[-1])
        if pair is None:
            return context, context
        return pair[0](context), pair[1](context)
