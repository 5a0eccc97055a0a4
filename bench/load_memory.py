"""Peak memory of loading a single-file checkpoint: it must stay near one copy of the weights.

    python -m bench.load_memory            # random SD1.5-sized fp32 checkpoint (~4.3 GB, kept in --dir)
    python -m bench.load_memory --smoke    # the tiny SD1 model (seconds)
    python -m bench.load_memory --record   # append the row to bench/RESULTS.md

Writing and loading each run in a fresh process (Linux): the loader's figure is its peak RSS (reset by
/proc/self/clear_refs after the imports) minus the RSS it had then. Prints a markdown row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import BenchRow, append_result, peak_rss_bytes

_WRITE = """
import sys, torch
from safetensors.torch import save_file
from liandan.models.model_spec import build_modules, standard_spec
from liandan.models.ldm_layout import key_plan
from liandan.models.saving import save_checkpoint
from liandan.models.tiny import tiny_bundle

if sys.argv[2] == "tiny":  # tiny shapes also need the .yaml the saver writes
    save_checkpoint(tiny_bundle("sd1"), sys.argv[1])
    raise SystemExit
spec = standard_spec("sd1")
text_encoders, unet, vae = build_modules(spec, empty=True)
modules = {"unet": unet, "vae": vae, "text_encoder_0": text_encoders[0]}
generator = torch.Generator().manual_seed(0)
state = {}
for key_map in key_plan(spec, modules):
    shape = tuple(modules[key_map.component].get_parameter(key_map.names[0]).shape)
    if key_map.transform == "conv1x1":
        shape = (*shape, 1, 1)
    state[key_map.ldm_key] = torch.randn(shape, generator=generator) * 0.02
save_file(state, sys.argv[1])
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="the tiny SD1 model instead of an SD1.5-sized one"
    )
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="where the test checkpoint is written (kept)")
    args = parser.parse_args(argv)
    size = "tiny" if args.smoke else "full"
    folder = args.dir or Path(tempfile.mkdtemp(prefix="liandan-bench-"))
    path = folder / f"random-sd1-{size}.safetensors"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _run(_WRITE, str(path), size)
    started = time.perf_counter()
    numbers = json.loads(_run(_LOAD, str(path)).strip().splitlines()[-1])
    file_mib = path.stat().st_size / 2**20
    growth_mib = (numbers["peak"] - numbers["base"]) / 2**20
    row = BenchRow(
        "load-memory",
        f"SD1 {size} random fp32 safetensors, {file_mib:.0f} MiB file",
        f"load {numbers['seconds']:.1f} s, RSS +{(numbers['loaded_peak'] - numbers['base']) / 2**20:.0f} MiB "
        f"(mapped lazily); after touching every weight peak RSS +{growth_mib:.0f} MiB over imports "
        f"({growth_mib / file_mib:.2f}x the file; weights {numbers['weights'] / 2**20:.0f} MiB, "
        f"held {(numbers['end'] - numbers['base']) / 2**20:.0f} MiB)",
    )
    print(f"| {row.benchmark} | {row.settings} | {row.result} |")
    print(
        f"(wall {time.perf_counter() - started:.0f} s, bench process peak {peak_rss_bytes() / 2**20:.0f} MiB)"
    )
    if args.record and not args.smoke:
        append_result(row, "python -m bench.load_memory")


if __name__ == "__main__":
    main()
