"""The host inside a running A1111 WebUI: THE ONLY module of the package that imports A1111's `modules.*`.

Everything is imported inside functions, so `liandan` imports (and is tested) without A1111. This layer only
turns WebUI state into plain data (folders, the selected checkpoint), frees and restores the WebUI model
around training, refreshes A1111's lists after a write, and mirrors progress into `shared.state`.

Which model we train on: our own ModelBundle loaded from the selected checkpoint's file, not the WebUI's
model object. DESIGN §3 would prefer building it from the weights in memory; this first version does not,
because the in-memory model may be fp16 or fp8 (lossy to train from), split across devices and hooked by
--lowvram/--medvram, and wrapped by A1111's attention hijacks (--xformers, --opt-sdp-attention). Loading the
file sidesteps all of that at the cost of reading it once per job; no bundle is cached here, as the WebUI
keeps its own (unloaded) copy in RAM already.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liandan.errors import CheckpointError, LiandanError
from liandan.host.base import ArtifactKind, CheckpointRef, Folders
from liandan.progress import Control, ProgressEvent, Reporter

if TYPE_CHECKING:
    import torch

    from liandan.job_runner import JobRunner
    from liandan.models.bundle import ModelBundle

log = logging.getLogger(__name__)

MIN_VERSION = (1, 7)  # preprocessing left the Train tab in 1.7.0; tested on 1.10.1 and dev (2026-03)
LOG_DIR_OPTION = "liandan_log_dir"
UNLOAD_OPTION = "liandan_unload_webui_model"

# (module, attribute path) every call below relies on; checked once so a WebUI without them fails at start
REQUIRED_API = (
    ("modules.shared", "state"),
    ("modules.shared", "reload_hypernetworks"),
    ("modules.shared", "refresh_checkpoints"),
    ("modules.sd_models", "model_data"),
    ("modules.sd_models", "unload_model_weights"),
    ("modules.sd_models", "send_model_to_device"),
    ("modules.sd_models", "checkpoints_list"),
    ("modules.sd_models", "select_checkpoint"),
    ("modules.sd_models", "get_closet_checkpoint_match"),
    ("modules.sd_hijack", "model_hijack.embedding_db"),
    ("modules.call_queue", "queue_lock"),
    ("modules.devices", "torch_gc"),
    ("modules.paths", "models_path"),
)


_runner: JobRunner | None = None
_runner_lock = threading.Lock()


def webui_runner() -> JobRunner:
    """The one job queue of this WebUI process, shared by the tab and the REST routes.

    It lives here, not in scripts/liandan.py: A1111 runs that file again at every UI reload ("Reload UI",
    "Apply and restart UI") while this package stays imported, so a job keeps running across a reload and
    the rebuilt tab still lists it with the jobs before it.
    """
    global _runner
    from liandan.job_runner import JobRunner

    with _runner_lock:
        if _runner is None:
            host = WebUIHost()
            # jobs not finished when the WebUI stops run again at its next start (they resume)
            _runner = JobRunner(host, journal=host.folders.logs / "liandan-queue.json")
        return _runner


def parse_version(tag: str) -> tuple[int, int] | None:
    """(major, minor) from A1111's `git_tag()`: "v1.10.1", "v1.10.1-96-g1937682a", "1.10.1" (its CHANGELOG
    fallback), Forge's "f2.0.1v1.10.1-..."; None for "<none>"."""
    match = re.search(r"(?:^|v)(\d+)\.(\d+)", tag)
    return (int(match[1]), int(match[2])) if match else None


def check_webui() -> str:
    """Fail fast, with what is wrong, on a WebUI this extension cannot work with. Returns the version tag."""
    import importlib

    from modules import launch_utils

    tag = str(launch_utils.git_tag())
    version = parse_version(tag)
    if version is None:
        log.warning("liandan: cannot tell the WebUI version from %r; checking its API instead", tag)
    elif version < MIN_VERSION or version[0] != 1:
        raise LiandanError(
            f"liandan needs AUTOMATIC1111 WebUI 1.{MIN_VERSION[1]} or later (1.x); "
            f"this WebUI reports {tag!r}. "
            "Update the WebUI, or run liandan on its own: python -m liandan ui"
        )
    missing = []
    for module_name, attr_path in REQUIRED_API:
        obj: Any = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            obj = getattr(obj, attr, None)
        if obj is None:
            missing.append(f"{module_name}.{attr_path}")
    if missing:
        raise LiandanError(f"this WebUI ({tag}) lacks what liandan uses: {', '.join(missing)}")
    return tag


def _family(model: Any) -> str | None:
    for family in ("sdxl", "sd2", "sd1"):
        if getattr(model, f"is_{family}", False):
            return family
    return None


def _ref(info: Any, family: str | None = None) -> CheckpointRef:
    return CheckpointRef(
        path=Path(info.filename), title=info.title, short_hash=getattr(info, "shorthash", None), family=family
    )


class WebUIHost:
    name = "webui"

    def __init__(self) -> None:
        self.version = check_webui()
        self.reporter = Reporter(self._mirror_progress)
        self.control = Control()
        # shared.state belongs to whoever holds A1111's queue_lock: we touch it only while we hold it
        self._holding_lock: threading.Thread | None = None

    @property
    def folders(self) -> Folders:
        """Read on every use: the log dir is a setting the user may change while the WebUI runs."""
        from modules import paths, sd_models, shared

        opts = shared.cmd_opts
        models = Path(paths.models_path)
        data = Path(getattr(paths, "data_path", models.parent))
        log_dir = getattr(shared.opts, LOG_DIR_OPTION, "") or "textual_inversion"
        templates = (
            getattr(opts, "textual_inversion_templates_dir", None) or data / "textual_inversion_templates"
        )
        return Folders(
            embeddings=Path(opts.embeddings_dir),
            hypernetworks=Path(opts.hypernetwork_dir),
            checkpoints=Path(opts.ckpt_dir or sd_models.model_path),
            # --lora-dir comes from the built-in Lora extension's preload; absent if the user disabled it
            lora=Path(getattr(opts, "lora_dir", None) or models / "Lora"),
            aesthetic_embeddings=models / "aesthetic_embeddings",
            models=models,
            logs=data / log_dir,  # a relative setting is relative to the data dir, an absolute one wins
            templates=Path(templates),
        )

    # --- checkpoints -------------------------------------------------------------------------------

    def current_checkpoint(self) -> CheckpointRef | None:
        from modules import sd_models

        # model_data.sd_model, not shared.sd_model: that property would load a model just to answer
        model = sd_models.model_data.sd_model
        if model is not None:
            return _ref(model.sd_checkpoint_info, _family(model))
        info = sd_models.select_checkpoint() if sd_models.checkpoints_list else None
        return _ref(info) if info is not None else None

    def list_checkpoints(self) -> list[CheckpointRef]:
        from modules import sd_models

        return [_ref(info) for info in sd_models.checkpoints_list.values()]

    def resolve_checkpoint(self, model: str | Path | None) -> CheckpointRef:
        """A job's `model`: "" for the WebUI's selected checkpoint, a file path, or a title A1111 knows."""
        from modules import sd_models

        if not model:
            current = self.current_checkpoint()
            if current is None:
                raise CheckpointError("no checkpoint is selected in the WebUI and none is listed")
            return current
        path = Path(model)
        if path.is_file():
            return CheckpointRef(path=path, title=path.name)
        info = sd_models.get_closet_checkpoint_match(str(model))
        if info is None:
            raise CheckpointError(
                f"checkpoint {str(model)!r} is neither a file nor a checkpoint the WebUI lists"
            )
        return _ref(info)

    @contextlib.contextmanager
    def model_for_training(self, checkpoint: Path | None = None) -> Iterator[ModelBundle]:
        """Hold A1111's generation lock, move the WebUI model off the GPU, train on our own bundle, and
        bring the WebUI model back whatever happens (our bundle leaves the GPU first).

        The lock makes a txt2img started meanwhile wait (as A1111's own training does) instead of moving
        the model back under us. Unloading and restoring go through A1111's functions because they know
        how the model is placed: with --lowvram/--medvram parts of it are hooked to move on demand, and
        `send_model_to_device` re-installs those hooks. (`reload_model_weights` would not do: for an
        unchanged checkpoint it returns at once and leaves the model on the CPU.)
        """
        from modules import devices, sd_models, shared

        from liandan.models.loading import load_bundle

        ref = self.resolve_checkpoint(checkpoint)
        with self.exclusive():
            webui_model = sd_models.model_data.sd_model
            if not getattr(shared.opts, UNLOAD_OPTION, True):  # the user has VRAM for both
                webui_model = None
            if webui_model is not None:
                sd_models.unload_model_weights(webui_model)
            devices.torch_gc()
            bundle = None
            try:
                bundle = load_bundle(ref.path)
                call_torch_forwards([*bundle.text_encoders, bundle.unet, bundle.vae])
                if bundle.short_hash is None:
                    bundle.short_hash = ref.short_hash
                yield bundle
            finally:
                try:
                    # the caller (and a traceback) still reference the bundle: dropping ours frees nothing,
                    # so its weights leave the GPU explicitly before the WebUI model comes back
                    if bundle is not None:
                        bundle.to("cpu")
                finally:
                    bundle = None
                    devices.torch_gc()
                    if webui_model is not None:
                        sd_models.send_model_to_device(webui_model)

    def prepare_trainable(self, modules: list[torch.nn.Module]) -> None:
        call_torch_forwards(modules)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """A1111's queue_lock (not reentrant), with shared.state ours from begin() to end() inside it, so a
        txt2img waiting for the lock starts on a clean state. Re-entered by its holder, it only yields."""
        from modules import call_queue, shared

        if self._holding_lock is threading.current_thread():
            yield
            return
        with call_queue.queue_lock:
            shared.state.begin(job="liandan")
            self._holding_lock = threading.current_thread()
            try:
                yield
            finally:
                self._holding_lock = None
                shared.state.end()

    # --- after writing an artifact -------------------------------------------------------------------

    def refresh(self, kind: ArtifactKind) -> None:
        """Make a new file usable in txt2img at once, without a restart. Under A1111's queue_lock, as its own
        /sdapi/v1/refresh-* routes do, so a running generation does not see its lists rebuilt under it."""
        from modules import sd_hijack, sd_models, shared

        with self.exclusive():
            if kind == "embeddings":
                # reloading reads the model's vector width through shared.sd_model, which would load a
                # checkpoint if none is loaded yet; A1111 reloads the embeddings itself after every load
                if sd_models.model_data.sd_model is not None:
                    sd_hijack.model_hijack.embedding_db.load_textual_inversion_embeddings(force_reload=True)
            elif kind == "hypernetworks":
                shared.reload_hypernetworks()
            elif kind == "checkpoints":
                shared.refresh_checkpoints()  # the UI layer updates the top-left dropdown
            elif kind == "lora":
                # the built-in Lora extension's module, as its own script imported it
                networks = sys.modules.get("networks")
                if networks is not None and hasattr(networks, "list_available_networks"):
                    networks.list_available_networks()
                else:
                    log.info(
                        "liandan: the Lora extension is not loaded; new LoRA files appear after its refresh"
                    )
            # aesthetic embeddings are listed by our own script from the folder: nothing to refresh

    # --- progress --------------------------------------------------------------------------------------

    def _mirror_progress(self, event: ProgressEvent) -> None:
        """Drive A1111's shared.state (console, progress API) and bridge its Interrupt button to us, only
        while we hold its queue_lock: outside it the state is a running txt2img's."""
        from modules import shared

        if event.kind == "error" or (event.kind == "done" and event.message):
            # the WebUI's console is where its users look when something went wrong, as for A1111's own jobs
            outcome = "failed" if event.kind == "error" else "done"
            print(f"liandan: {event.job or 'job'} {outcome}: {event.message}", file=sys.stderr, flush=True)
        if self._holding_lock is not threading.current_thread():
            return
        state = shared.state
        if event.kind == "start":
            state.job = f"liandan {event.job}".strip()
        if event.total:
            state.job_count = event.total
        if event.kind == "step":
            state.job_no = event.step
            loss = "" if event.loss is None else f", loss {event.loss:.5f}"
            state.textinfo = f"{event.job} step {event.step}/{event.total}{loss}".strip()
        elif event.message:
            state.textinfo = event.message
        # Interrupt, and its second stage "stop generating" (1.8+)
        if state.interrupted or getattr(state, "stopping_generation", False):
            self.control.interrupt()


# --- A1111's process-wide layer patches -----------------------------------------------------------------
#
# The built-in Lora extension replaces `forward` of torch's Linear, Conv2d, GroupNorm, LayerNorm and
# MultiheadAttention for the whole process (extensions-builtin/Lora/lora_patches.py, through A1111's
# `modules.patches`, which keeps each original). Its replacement applies networks only to the layers of the
# WebUI model it has named; on ours it finds no name and calls torch's forward after a few attribute
# lookups (and an options read) per call, some 3-7% of a tiny model's training step in a real WebUI.

LORA_PATCHES_KEY = "lora_patches"  # the patching module's __name__, the key it patches under


def call_torch_forwards(modules: list[torch.nn.Module]) -> int:
    """Make the layers in `modules` call torch's own `forward` instead of the Lora extension's replacement
    (an instance attribute, as accelerate's hooks do); a layer that already has one (a library's wrapper)
    is left alone. For the bundle before a method wraps any layer, and for the method's own modules once
    built (a hypernetwork's layers). Returns how many layers were changed."""
    try:
        from modules import patches
    except ImportError:  # a WebUI without the patches module patches nothing this way
        return 0
    # the replacement a patched class has now -> torch's own forward it replaced
    torch_forward = {
        owner.forward: original
        for (owner, name), original in patches.originals.get(LORA_PATCHES_KEY, {}).items()
        if name == "forward"
        and getattr(original, "__module__", None) == getattr(owner, "__module__", "")
        and owner.forward is not original  # still patched
    }
    changed = 0
    for module in modules:
        for layer in module.modules():
            # by the class's forward: a subclass that inherits the patched one counts too
            original = torch_forward.get(type(layer).forward)
            if original is not None and "forward" not in vars(layer):
                layer.forward = types.MethodType(original, layer)
                changed += 1
    return changed


# --- aesthetic gradients in txt2img/img2img ---------------------------------------------------------------
#
# While a generation with an aesthetic embedding runs, the WebUI model's `get_learned_conditioning` is
# wrapped (an instance attribute over the class's method): the WebUI encodes as usual and we blend in our
# adapted conditioning of each positive text (A1111 marks negative batches `is_negative_prompt`). The
# generation gets its own conditioning caches, so the WebUI's shared ones (keyed without script arguments)
# neither serve a plain result to us nor keep ours for a plain run. `postprocess` (and the next `process`,
# should a generation fail in between, and unloading the script) removes the wrapper again.

_WRAPPED = "liandan_aesthetic_original"


class _AestheticModels:
    """The text encoders of the selected checkpoint (read from its file once) and a conditioner per
    embedding file, so nothing is read from disk per prompt and repeated prompts hit the cache."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checkpoint: str | None = None
        self._bundle: ModelBundle | None = None
        self._conditioners: dict[tuple[Path, float], Any] = {}

    def conditioner(self, name: str, allow_download: bool = True) -> Any:
        import dataclasses

        from modules import devices, shared

        from liandan.formats.aesthetic import load_aesthetic
        from liandan.methods.aesthetic import find_aesthetic
        from liandan.models.aesthetic_conditioning import make_conditioner
        from liandan.models.loading import load_bundle

        folders = webui_runner().host.folders
        path = find_aesthetic(name, folders.aesthetic_embeddings)
        key = (path.resolve(), path.stat().st_mtime)
        checkpoint = shared.sd_model.sd_checkpoint_info.filename
        with self._lock:
            if checkpoint != self._checkpoint:
                self._bundle, self._conditioners = None, {}
                bundle = load_bundle(Path(checkpoint))
                # only the text side is used: the UNet and VAE are dropped at once
                self._bundle = dataclasses.replace(bundle, unet=None, vae=None)
                for encoder in self._bundle.text_encoders:
                    encoder.to(devices.device)
                self._checkpoint = checkpoint
            if key not in self._conditioners:
                self._conditioners[key] = make_conditioner(self._bundle, load_aesthetic(path), folders.models,
                                                           allow_download)  # fmt: skip
            return self._conditioners[key]


_aesthetic_models = _AestheticModels()


def aesthetic_settings(args: tuple[Any, ...]) -> tuple[str, Any]:
    """(embedding name, AestheticSettings) of the Script's arguments, validated (ConfigError)."""
    from liandan.jobs import AestheticSettings
    from liandan.models.aesthetic_conditioning import NO_AESTHETIC, SCRIPT_ARGS

    values = dict(zip(SCRIPT_ARGS, args))
    name = str(values.pop("embedding", "") or "")
    values["steps"] = int(values.get("steps", 0))
    values["learn_rate"] = float(values.get("learn_rate", 0))  # a textbox in the old extension
    return ("" if name == NO_AESTHETIC else name), AestheticSettings.from_dict(values)


def aesthetic_process(p: Any, *args: Any) -> None:
    """The Script's `process`: install the wrapper for this generation when an embedding applies."""
    from modules import shared

    from liandan.models.aesthetic_conditioning import infotext_fields

    restore_conditioning()
    name, settings = aesthetic_settings(args)
    if not name or not settings.active:
        return
    conditioner = _aesthetic_models.conditioner(name)
    p.extra_generation_params.update(infotext_fields(name, settings))
    for cache in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
        if hasattr(p, cache):
            setattr(p, cache, [None, None])
    model = shared.sd_model
    original = model.get_learned_conditioning

    def steered(texts: Any) -> Any:
        cond = original(texts)
        if getattr(texts, "is_negative_prompt", False):
            return cond
        clip_skip = int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1)
        texts = list(texts)
        embeddings = webui_embeddings(texts)
        return steer_webui_conditioning(conditioner, texts, cond, settings, clip_skip, embeddings)

    setattr(steered, _WRAPPED, original)
    model.get_learned_conditioning = steered


def restore_conditioning() -> None:
    """Remove our wrapper from the WebUI model, if it is there (idempotent)."""
    from modules import sd_models

    model = sd_models.model_data.sd_model
    if model is not None and hasattr(model.__dict__.get("get_learned_conditioning"), _WRAPPED):
        del model.get_learned_conditioning


def webui_embeddings(texts: list[str]) -> dict[str, Any]:
    """The WebUI's loaded textual-inversion embeddings named in `texts`, so our encoder splices them in as
    the WebUI's does (SD1/SD2: [n, dim] vectors; SDXL: {"clip_l", "clip_g"}, our own layout)."""
    from modules import sd_hijack

    loaded = getattr(sd_hijack.model_hijack.embedding_db, "word_embeddings", {})
    joined = "\n".join(texts)
    return {name: embedding.vec for name, embedding in loaded.items() if name in joined}


def steer_webui_conditioning(
    conditioner: Any,
    texts: list[str],
    cond: Any,
    settings: Any,
    clip_skip: int,
    embeddings: dict[str, Any] | None = None,
) -> Any:
    """A1111's conditioning of `texts` (a tensor; SDXL: {"crossattn", "vector"} whose vector starts with
    OpenCLIP-G's pooled output) blended with the adapted one."""
    import torch

    from liandan.models.conditioning import Conditioning

    if isinstance(cond, dict):
        width = conditioner.bundle.text_encoders[-1].config.projection_dim
        vector = cond["vector"]
        plain = Conditioning(cond["crossattn"], vector[:, :width])
        steered = conditioner.apply(texts, plain, settings, clip_skip, embeddings)
        pooled = torch.cat([steered.pooled, vector[:, width:]], dim=1)
        return {**cond, "crossattn": steered.context, "vector": pooled}
    return conditioner.apply(texts, Conditioning(cond), settings, clip_skip, embeddings).context
