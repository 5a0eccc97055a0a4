"""The model loader's surface: the selected checkpoint, unloading to the CPU and back (lowvram-aware)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from modules import record

model_path = ""
checkpoints_list: dict[str, CheckpointInfo] = {}


class CheckpointInfo:
    def __init__(self, filename: str, shorthash: str | None = "0123456789") -> None:
        self.filename = filename
        self.name = Path(filename).name
        self.model_name = Path(filename).stem
        self.shorthash = shorthash
        self.title = f"{self.name} [{shorthash}]" if shorthash else self.name


class FakeSdModel:
    def __init__(self, info: CheckpointInfo, family: str, lowvram: bool) -> None:
        self.sd_checkpoint_info = info
        self.sd_model_checkpoint = info.filename
        self.is_sd1, self.is_sd2, self.is_sdxl = family == "sd1", family == "sd2", family == "sdxl"
        self.lowvram = lowvram
        self.device = "cuda"  # with lowvram: hooks move parts on demand


model_data = SimpleNamespace(sd_model=None)


def reset(family: str | None, lowvram: bool) -> None:
    checkpoints_list.clear()
    for name in ("tiny-sd1", "other"):
        info = CheckpointInfo(str(Path(model_path) / f"{name}.safetensors"))
        checkpoints_list[info.title] = info
    first = next(iter(checkpoints_list.values()))
    model_data.sd_model = FakeSdModel(first, family, lowvram) if family else None


def select_checkpoint() -> CheckpointInfo | None:
    return next(iter(checkpoints_list.values()), None)


def get_closet_checkpoint_match(search: str) -> CheckpointInfo | None:
    found = sorted((i for i in checkpoints_list.values() if search in i.title), key=lambda i: len(i.title))
    return found[0] if found else None


def unload_model_weights(sd_model: FakeSdModel | None = None, info: object = None) -> None:
    m = sd_model or model_data.sd_model
    record("unload_model_weights", "lowvram.send_everything_to_cpu" if m.lowvram else "to(cpu)")
    m.device = "cpu"


def send_model_to_device(m: FakeSdModel) -> None:
    record("send_model_to_device", "lowvram.apply" if m.lowvram else "to(device)")
    m.device = "cuda"


def reload_model_weights(sd_model: object = None, info: object = None, forced_reload: bool = False) -> None:
    """Loads the checkpoint `opts.sd_model_checkpoint` names (the dropdown's), if it is another one; A1111
    1.10 returns at once for an unchanged checkpoint."""
    from modules import shared

    record("reload_model_weights")
    current = model_data.sd_model
    wanted = shared.opts.data.get("sd_model_checkpoint")
    if current is not None and wanted and wanted != current.sd_checkpoint_info.title:
        family = "sdxl" if current.is_sdxl else "sd2" if current.is_sd2 else "sd1"
        model_data.sd_model = FakeSdModel(checkpoints_list[wanted], family, current.lowvram)
