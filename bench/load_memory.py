"""Load time and peak memory of a single-file checkpoint: it must stay near one copy of the weights.

    python -m bench.load_memory                          # random SD1.5- and SDXL-sized fp32 checkpoints
    python -m bench.load_memory --family sdxl --dtype fp16 --dir /tmp/ckpt   # SDXL-sized fp16 (~6.9 GB), kept
    python -m bench.load_memory --smoke                  # the tiny SD1 and SDXL models (seconds)
    python -m bench.load_memory --record                 # append one row per family to bench/RESULTS.md

Writing and loading each run in a fresh process (Linux): the loader's figure is its peak RSS (reset by
/proc/self/clear_refs after the imports) minus the RSS it had then. Prints a markdown row per family. The
checkpoints are written to --dir (kept) or a temporary folder (deleted afterwards); SD1.5 fp32 is ~4.3 GB,
SDXL fp32 ~13.9 GB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import BenchRow, append_result, peak_rss_bytes

FAMILY_NAMES = {"sd1": "SD1", "sdxl": "SDXL"}

_WRITE = """
import sys, torch
from safetensors.torch import save_file
from liandan.models.ldm_layout import key_plan, to_ldm_tensor
from liandan.models.model_spec import build_modules, standard_spec
from liandan.models.saving import save_checkpoint
from liandan.models.tiny import tiny_bundle

path, family, size, dtype_name = sys.argv[1:5]
if size == "tiny":  # tiny shapes also need the .yaml the saver writes
    save_checkpoint(tiny_bundle(family), path)
    raise SystemExit
spec = standard_spec(family)
text_encoders, unet, vae = build_modules(spec, empty=True)
modules = {"unet": unet, "vae": vae, **{f"text_encoder_{i}": te for i, te in enumerate(text_encoders)}}
dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype_name]
generator = torch.Generator().manual_seed(0)
state = {}
for key_map in key_plan(spec, modules):
    module = modules[key_map.component]
    parts = [torch.randn(module.get_parameter(name).shape, generator=generator).mul_(0.02).to(dtype)
             for name in key_map.names]
    state[key_map.ldm_key] = to_ldm_tensor(key_map, parts)
save_file(state, path)
"""

_LOAD = """
import json, sys, time
from pathlib import Path
import accelerate, safetensors, torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel
from liandan.models.loading import load_bundle
from liandan.models.tokenizer import clip_tokenizer

clip_tokenizer()  # imports and the cached vocabulary are not the weights: count them before the baseline

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024

Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
base = status("VmRSS")
start = time.perf_counter()
bundle = load_bundle(Path(sys.argv[1]))
seconds = time.perf_counter() - start
loaded_peak = status("VmHWM")
# safetensors maps the file lazily: touch every weight, as a first forward pass would
params = [p for m in (bundle.unet, bundle.vae, *bundle.text_encoders) for p in m.parameters()]
touched = sum(float(p.float().sum()) for p in params)
weights = sum(p.numel() * p.element_size() for p in params)
numbers = {"base": base, "loaded_peak": loaded_peak, "peak": status("VmHWM"), "end": status("VmRSS")}
print(json.dumps({**numbers, "seconds": seconds, "weights": weights}))
"""


def _run(code: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"subprocess failed:\n{result.stderr[-3000:]}")
    return result.stdout


def measure_family(family: str, size: str, dtype: str, folder: Path) -> BenchRow:
    """Write (unless it is there) and load one random checkpoint of `family`; the row to print/record."""
    path = folder / f"random-{family}-{size}-{dtype}.safetensors"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _run(_WRITE, str(path), family, size, dtype)
    numbers = json.loads(_run(_LOAD, str(path)).strip().splitlines()[-1])
    file_mib = path.stat().st_size / 2**20
    growth_mib = (numbers["peak"] - numbers["base"]) / 2**20
    dtype_text = "" if size == "tiny" else f" {dtype}"
    return BenchRow(
        "load-memory",
        f"{FAMILY_NAMES[family]} {size} random{dtype_text} safetensors, {file_mib:.0f} MiB file",
        f"load {numbers['seconds']:.1f} s, RSS +{(numbers['loaded_peak'] - numbers['base']) / 2**20:.0f} MiB "
        f"(mapped lazily); after touching every weight peak RSS +{growth_mib:.0f} MiB over imports "
        f"({growth_mib / file_mib:.2f}x the file; weights {numbers['weights'] / 2**20:.0f} MiB, "
        f"held {(numbers['end'] - numbers['base']) / 2**20:.0f} MiB)",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny models instead of the released sizes")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--family", choices=tuple(FAMILY_NAMES), nargs="+", default=list(FAMILY_NAMES))
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="of the written file")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the test checkpoints are written (kept)"
    )
    args = parser.parse_args(argv)
    size = "tiny" if args.smoke else "full"
    folder = args.dir or Path(tempfile.mkdtemp(prefix="liandan-bench-"))
    try:
        for family in args.family:
            started = time.perf_counter()
            row = measure_family(family, size, args.dtype, folder)
            print(f"| {row.benchmark} | {row.settings} | {row.result} |")
            wall, peak = time.perf_counter() - started, peak_rss_bytes() / 2**20
            print(f"(wall {wall:.0f} s, bench process peak {peak:.0f} MiB)")
            if args.record and not args.smoke:
                command = f"python -m bench.load_memory --family {family} --dtype {args.dtype}"
                append_result(row, command)
    finally:
        if args.dir is None:  # gigabytes in /tmp
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
