"""Hypernetwork parameter count and .pt file size per layer structure and model family.

    python -m bench.hypernetwork_sizes            # from the repo root; real families (files up to ~1 GB)
    python -m bench.hypernetwork_sizes --smoke    # the fixture model's tiny widths, in seconds

Parameters are counted on the meta device (no memory); file sizes are measured by writing the real
A1111-loadable file with liandan's writer into a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from liandan.formats.hypernetwork import save_hypernetwork
from liandan.models.hypernetwork_modules import Hypernetwork, default_sizes

STRUCTURES = ("1, 1", "1, 1, 1", "1, 1.5, 1", "1, 2, 1", "1, 2, 2, 1", "1, 4, 1")
SMOKE_SIZES = {"tiny": (32, 64, 128)}


def _structure(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def parameter_count(sizes: tuple[int, ...], structure: str, layer_norm: bool) -> int:
    with torch.device("meta"):
        net = Hypernetwork("bench", sizes, _structure(structure), "relu", add_layer_norm=layer_norm)
    return sum(p.numel() for p in net.parameters())


def file_size(sizes: tuple[int, ...], structure: str, layer_norm: bool, folder: Path) -> int:
    net = Hypernetwork("bench", sizes, _structure(structure), "relu", add_layer_norm=layer_norm)
    path = save_hypernetwork(net, folder / "bench.pt")
    size = path.stat().st_size
    path.unlink()
    return size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny widths only (seconds)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    families = SMOKE_SIZES if args.smoke else {f: default_sizes(f) for f in ("sd1", "sd2", "sdxl")}

    print(
        "| family | sizes | layer structure | layer norm | parameters | file (MiB) | bytes/param | write s |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for family, sizes in families.items():
            sizes_text = ", ".join(map(str, sizes))
            for structure in STRUCTURES:
                for layer_norm in (False, True):
                    params = parameter_count(sizes, structure, layer_norm)
                    start = time.perf_counter()
                    size = file_size(sizes, structure, layer_norm, Path(tmp))
                    seconds = time.perf_counter() - start
                    print(
                        f"| {family} | {sizes_text} | {structure} | {layer_norm} | {params:,} "
                        f"| {size / 2**20:.2f} | {size / params:.3f} | {seconds:.2f} |"
                    )


if __name__ == "__main__":
    main()
