"""What the NaN guard costs in memory: a trainable above the snapshot threshold (a large linear layer with
AdamW, standing in for a UNet) trained 51 steps by the real loop, once with the in-memory snapshot forced
on (what every run did before: weights and optimizer state copied at the start, every 50 steps and at each
save) and once as the loop now decides (above `SNAPSHOT_MAX_BYTES`: no copy, rollback from the state on
disk). Each mode runs in its own process, since the peak RSS never goes down; the figure is the peak during
training (read at the last step, before the final save) over the RSS before training started.

    python -m bench.nan_guard_memory --smoke     # a small layer, seconds (CI)
    python -m bench.nan_guard_memory --record    # 33.5M parameters (128 MiB, AdamW state 256 MiB)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.harness import BenchRow, append_result, benchmark_args, peak_rss_bytes
from liandan.train.method import ParamGroup, SavedArtifact

STEPS = 51  # past the in-memory snapshot of step 50, which holds AdamW's state too


class _Dataset:
    def __init__(self, width: int) -> None:
        self.inputs = torch.randn(8, width, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.inputs[index]

    def set_epoch(self, epoch: int) -> None:
        pass

    def collate(self, items: list[torch.Tensor]) -> dict[str, Any]:
        return {"x": torch.stack(items)}


class _LargeLayer:
    kind, name, gradient_sync = "bench", "large", "all_reduce"

    def __init__(self, width: int, out: Path) -> None:
        self.net, self.out = torch.nn.Linear(width, 2 * width), out

    def parameter_groups(self) -> list[ParamGroup]:
        return [ParamGroup("net", list(self.net.parameters()))]

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.net]

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.net(batch["x"]).square().mean()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.net.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)

    def after_optimizer_step(self, step: int) -> None:
        pass

    def save(self, step: int, final: bool) -> SavedArtifact:
        return SavedArtifact([], step)

    def saved_groups(self, artifact: SavedArtifact) -> set[str]:
        return {"net"}

    def preview(self, prompt: str, seed: int, enabled: bool) -> Any:
        raise NotImplementedError("no previews in this benchmark")


def _child(mode: str, width: int) -> None:
    """Train STEPS steps in this process; print the peak RSS growth during training as JSON."""
    import accelerate  # noqa: F401  (imported before the baseline: its import is not the guard's)

    from liandan.jobs import TrainSpec
    from liandan.progress import Control, Reporter
    from liandan.train import nan_guard
    from liandan.train.loop import train

    torch.set_num_threads(1)
    if mode == "in-memory":
        nan_guard.SNAPSHOT_MAX_BYTES = 2**62
    with tempfile.TemporaryDirectory() as folder:
        method = _LargeLayer(width, Path(folder))
        params = sum(p.numel() for p in method.net.parameters())
        before, during = peak_rss_bytes(), []

        def on_step(event: Any) -> None:
            if event.kind == "step" and event.step == STEPS:
                during.append(peak_rss_bytes())

        spec = TrainSpec(learn_rate="0.001", max_steps=STEPS, save_every=0, preview_every=0)
        train(method, _Dataset(width), spec, run_dir=Path(folder), reporter=Reporter(on_step),
              control=Control(), tensorboard=False)  # fmt: skip
    print(json.dumps({"params": params, "growth": during[0] - before}))


def main() -> None:
    args = benchmark_args(description=__doc__)
    width = 256 if args.smoke else 4096
    results = {}
    for mode in ("in-memory", "default"):
        command = [sys.executable, "-m", "bench.nan_guard_memory", "--child", mode, str(width)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    params = results["default"]["params"]
    mib = {mode: r["growth"] / 2**20 for mode, r in results.items()}
    row = BenchRow(
        "nan-guard-memory",
        f"linear {params:,} params fp32 AdamW cpu, {STEPS} steps",
        f"peak RSS growth while training: in-memory snapshot {mib['in-memory']:.0f} MiB, "
        f"now (rollback from disk) {mib['default']:.0f} MiB",
    )
    if args.record:
        append_result(row, "python -m bench.nan_guard_memory --record")
    print(f"{row.benchmark}: {row.settings}: {row.result}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
