"""The aesthetic-gradients hook inside the WebUI (host/webui.py, scripts/liandan.py) against tests/a1111_stub:
the WebUI model's conditioning is steered for one generation, negatives stay plain, the caches are the
generation's own, and everything is as before once it is removed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from liandan.errors import ConfigError
from liandan.formats.aesthetic import AestheticEmbedding, save_aesthetic
from liandan.models.aesthetic_conditioning import SCRIPT_ARGS
from liandan.models.clip_vision import FEATURE_KEYS, load_towers
from liandan.models.conditioning import PromptEncoder
from liandan.models.loading import load_bundle
from liandan.models.tiny import write_tiny_models

STUB = Path(__file__).parent / "a1111_stub"
REPO = Path(__file__).resolve().parents[1]
ON = ("look", 0.9, 3, 0.005, False, 0.1, "", False)


class Texts(list):
    """A1111's SdConditioning: a list of texts that may be marked negative."""

    def __init__(self, texts, is_negative_prompt: bool = False) -> None:
        super().__init__(texts)
        self.is_negative_prompt = is_negative_prompt


def _drop_stub_modules() -> None:
    for name in [m for m in sys.modules if m == "modules" or m.startswith("modules.")]:
        del sys.modules[name]


@pytest.fixture(params=["sd1", "sdxl"])
def webui(request, tmp_path, monkeypatch):
    """A stand-in WebUI whose loaded model is a tiny checkpoint, encoding prompts with our PromptEncoder
    (as the WebUI's own cond_stage_model would), with an aesthetic embedding "look" in its folder."""
    import liandan.host.webui

    family = request.param
    monkeypatch.syspath_prepend(str(STUB))
    _drop_stub_modules()
    import modules
    from modules import devices, sd_models, shared

    modules.configure(tmp_path / "webui", model=family)
    monkeypatch.setattr(liandan.host.webui, "_runner", None)
    monkeypatch.setattr(liandan.host.webui, "_aesthetic_models", liandan.host.webui._AestheticModels())
    checkpoint = write_tiny_models(Path(sd_models.model_path))[family]
    bundle = load_bundle(checkpoint)

    class Model(sd_models.FakeSdModel):
        def get_learned_conditioning(self, texts):
            cond = PromptEncoder(bundle).encode(list(texts))
            if bundle.is_sdxl:  # the WebUI's vector: G's pooled output, then the size embeddings
                return {
                    "crossattn": cond.context,
                    "vector": torch.cat([cond.pooled, torch.ones(len(texts), 6)], 1),
                }
            return cond.context

    model = Model(sd_models.CheckpointInfo(str(checkpoint)), family, lowvram=False)
    sd_models.model_data.sd_model = shared.sd_model = model
    devices.device = "cpu"
    shared.opts.CLIP_stop_at_last_layers = 1
    towers = load_towers(bundle, tmp_path)
    features = {key: torch.nn.functional.normalize(torch.randn(1, t.width), dim=-1)
                for key, t in zip(FEATURE_KEYS[family], towers)}  # fmt: skip
    folder = Path(modules.paths.models_path) / "aesthetic_embeddings"
    save_aesthetic(AestheticEmbedding(features, family=family), folder / "look.safetensors")
    yield SimpleNamespace(modules=modules, model=model)
    liandan.host.webui.restore_conditioning()
    if liandan.host.webui._runner is not None:
        liandan.host.webui._runner.close(timeout=5)
    _drop_stub_modules()


def processing():
    shared_cache = [None, None]  # StableDiffusionProcessing's class-level caches
    return SimpleNamespace(extra_generation_params={}, cached_c=shared_cache, cached_uc=shared_cache,
                           cached_hr_c=shared_cache, cached_hr_uc=shared_cache), shared_cache  # fmt: skip


def flat(cond) -> torch.Tensor:
    return (
        torch.cat([cond["crossattn"].flatten(), cond["vector"].flatten()]) if isinstance(cond, dict) else cond
    )


def test_the_hook_steers_positives_only_for_one_generation_and_is_removed(webui) -> None:
    from liandan.host import webui as host

    prompt, negative = Texts(["a red cat"]), Texts([""], is_negative_prompt=True)
    before, before_negative = (
        flat(webui.model.get_learned_conditioning(prompt)),
        flat(webui.model.get_learned_conditioning(negative)),
    )
    p, shared_cache = processing()
    host.aesthetic_process(p, *ON)
    assert p.extra_generation_params["Aesthetic embedding"] == "look"
    assert p.extra_generation_params["Aesthetic steps"] == 3
    assert all(
        getattr(p, c) is not shared_cache for c in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc")
    )
    steered = webui.model.get_learned_conditioning(prompt)
    assert not torch.allclose(flat(steered), before)
    if isinstance(steered, dict):  # only the pooled part of the vector moves, not the size embeddings
        assert torch.equal(steered["vector"][:, -6:], torch.ones(1, 6))
    assert torch.equal(flat(webui.model.get_learned_conditioning(negative)), before_negative)

    host.restore_conditioning()  # the Script's postprocess
    assert "get_learned_conditioning" not in vars(webui.model)
    assert torch.equal(flat(webui.model.get_learned_conditioning(prompt)), before)


def test_the_webuis_textual_inversion_embeddings_are_spliced_into_our_encoding(webui) -> None:
    from modules import sd_hijack

    from liandan.host import webui as host

    width = 32 if not webui.model.is_sdxl else None
    vectors = (
        torch.randn(2, width) if width else {"clip_l": torch.randn(2, 64), "clip_g": torch.randn(2, 128)}
    )
    sd_hijack.model_hijack.embedding_db.word_embeddings = {"tiny_ti": SimpleNamespace(vec=vectors)}
    try:
        host.aesthetic_process(processing()[0], *ON)
        webui.model.get_learned_conditioning(Texts(["a tiny_ti cat"]))
        webui.model.get_learned_conditioning(Texts(["a cat"]))
        (conditioner,) = host._aesthetic_models._conditioners.values()
        assert [key[3] for key in conditioner._cache] == [("tiny_ti",), ()]
    finally:
        del sd_hijack.model_hijack.embedding_db.word_embeddings


def test_weight_zero_or_no_embedding_installs_nothing_and_bad_values_are_refused(webui) -> None:
    from liandan.host import webui as host

    for args in (("look", 0.0, *ON[2:]), ("None", *ON[1:]), ("look", 0.9, 0, *ON[3:])):
        p, shared_cache = processing()
        host.aesthetic_process(p, *args)
        assert p.extra_generation_params == {} and p.cached_c is shared_cache
        assert "get_learned_conditioning" not in vars(webui.model)
    with pytest.raises(ConfigError, match=r"steps = 99 is out of range"):
        host.aesthetic_process(processing()[0], "look", 0.9, 99, *ON[3:])


def test_a_failed_generation_leaves_no_wrapper_behind(webui) -> None:
    from liandan.host import webui as host

    host.aesthetic_process(processing()[0], *ON)
    assert "get_learned_conditioning" in vars(webui.model)
    host.aesthetic_process(processing()[0], "None", *ON[1:])  # the next generation, without aesthetic
    assert "get_learned_conditioning" not in vars(webui.model)
    host.aesthetic_process(processing()[0], *ON)
    for callback in webui.modules.script_callbacks.callbacks["script_unloaded"]:
        callback()


def test_the_entry_scripts_section_has_every_setting_in_argument_order(webui) -> None:
    pytest.importorskip("gradio", reason="the Script's section is Gradio's (not in the newest-stack job)")
    import gradio as gr
    from modules import scripts

    spec = importlib.util.spec_from_file_location("liandan_entry", REPO / "scripts" / "liandan.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    script = entry.AestheticGradients()
    assert script.title() == "Aesthetic gradients" and script.show(False) is scripts.AlwaysVisible
    with gr.Blocks():
        controls = script.ui(is_img2img=False)
    assert len(controls) == len(SCRIPT_ARGS) and controls[0].choices == ["None", "look"]
    assert [c.value for c in controls[1:4]] == [0.9, 5, 0.0001]
    labels = [label for _, label in script.infotext_fields]
    assert "Aesthetic weight" in labels and "Aesthetic LR" in labels
    read_embedding = script.infotext_fields[0][1]
    assert read_embedding({"Aesthetic embedding": "look"}) == "look" and read_embedding({}) == "None"
    p = processing()[0]
    script.process(p, *[c.value for c in controls])  # the defaults: no embedding chosen, nothing happens
    assert p.extra_generation_params == {}
    script.process(p, *ON)
    script.postprocess(p, None, *ON)
    assert "get_learned_conditioning" not in vars(webui.model)
