import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from liandan.errors import CheckpointError
from liandan.models.ldm_yaml import configs_from_yaml, read_yaml, yaml_text
from liandan.models.model_spec import standard_spec
from liandan.models.tiny import tiny_spec

_FIELDS = (
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "down_block_types",
    "up_block_types",
    "use_linear_projection",
)


def test_fixture_yaml_gives_the_tiny_sd1_architecture(fixtures_dir):
    found = configs_from_yaml(read_yaml(fixtures_dir / "model" / "tiny-sd1.yaml"))
    spec = tiny_spec("sd1")
    assert {k: found["unet"][k] for k in _FIELDS} == {k: spec.unet[k] for k in _FIELDS}
    assert found["vae"]["block_out_channels"] == [32, 32, 32, 32]
    assert (found["prediction_type"], found["clip_version"]) == ("epsilon", "models/tiny-clip")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_written_yaml_reads_back_to_the_same_configs(family, tmp_path):
    spec = tiny_spec(family)
    texts = [te.config for te in spec.text_encoders]
    path = tmp_path / "m.yaml"
    path.write_text(yaml_text(family, spec.unet, spec.vae, spec.scheduler, texts, clip_version="models/c"))
    found = configs_from_yaml(read_yaml(path))
    for key in (*_FIELDS, "transformer_layers_per_block", "addition_time_embed_dim"):
        expected = spec.unet.get(key, 1 if key == "transformer_layers_per_block" else None)
        got = found["unet"].get(key)
        if key == "transformer_layers_per_block" and not isinstance(expected, list):
            expected = [expected] * len(spec.unet["block_out_channels"])
        assert got == expected, key
    assert found["prediction_type"] == spec.prediction_type
    assert found["vae"]["scaling_factor"] == spec.vae["scaling_factor"]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_written_yaml_reads_back_the_noise_schedule(family, tmp_path):
    """LDM keeps the betas in LatentDiffusion's params, sgm in its denoiser's discretization."""
    spec = tiny_spec(family)
    schedule = {"beta_start": 0.001, "beta_end": 0.02, "num_train_timesteps": 500}
    texts = [te.config for te in spec.text_encoders]
    path = tmp_path / "m.yaml"
    path.write_text(yaml_text(family, spec.unet, spec.vae, {**spec.scheduler, **schedule}, texts))
    assert configs_from_yaml(read_yaml(path))["scheduler"] == schedule


def test_broken_yaml_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match=r"m\.yaml"):
        read_yaml(path)


# What ldm's / sgm's classes accept, read from the WebUI's pinned repositories' source (not imported: they
# need pytorch_lightning, einops, kornia, which our test environment has no reason to install).
REPOSITORIES = ("generative-models", "stable-diffusion-stability-ai")


@dataclass
class Signature:
    accepted: set[str]
    required: set[str]


@pytest.fixture(scope="module")
def webui_repositories(fixtures_dir: Path) -> Path:
    path = fixtures_dir.parents[1] / "a1111-webui-1.10.1" / "repositories"
    if not path.is_dir():
        pytest.skip(f"the WebUI source is not beside the fixtures: {path}")
    return path


def _find_class(repositories: Path, target: str) -> tuple[ast.Module, ast.ClassDef] | None:
    """The class `target` ("pkg.module.Name") in the repositories, following `from .x import Name`."""
    module, name = target.rsplit(".", 1)
    for repo in REPOSITORIES:
        stem = repositories / repo / Path(*module.split("."))
        for file, package in (
            (stem.with_suffix(".py"), module.rpartition(".")[0]),
            (stem / "__init__.py", module),
        ):
            if not file.is_file():
                continue
            tree = ast.parse(file.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, ast.ClassDef) and node.name == name:
                    return tree, node
                if isinstance(node, ast.ImportFrom) and name in {alias.name for alias in node.names}:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    source = f"{base}.{node.module}" if node.level else node.module
                    return _find_class(repositories, f"{source}.{name}")
    return None


def _signature(tree: ast.Module, node: ast.ClassDef) -> Signature:
    """The keyword arguments `node(...)` accepts and requires; **kwargs forwarded to a base class defined in
    the same file count that class's, less what the call to it passes itself."""
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = [classes[b.id] for b in node.bases if isinstance(b, ast.Name) and b.id in classes]
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        return _signature(tree, bases[0]) if bases else Signature(set(), set())
    args = init.args
    positional = args.args[1:]  # without self
    required = {a.arg for a in positional[: len(positional) - len(args.defaults)]}
    required |= {a.arg for a, default in zip(args.kwonlyargs, args.kw_defaults) if default is None}
    accepted = {a.arg for a in [*positional, *args.kwonlyargs]}
    if args.kwarg is None:
        return Signature(accepted, required)
    passed: set[str] = set()
    for call in ast.walk(init):
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
            continue
        on_kwargs = isinstance(call.func.value, ast.Name) and call.func.value.id == args.kwarg.arg
        if on_kwargs and call.func.attr in ("pop", "get") and isinstance(call.args[0], ast.Constant):
            accepted.add(call.args[0].value)
            if call.func.attr == "pop" and len(call.args) == 1:
                required.add(call.args[0].value)
        if call.func.attr == "__init__":  # super().__init__(...)
            passed |= {keyword.arg for keyword in call.keywords if keyword.arg}
    if bases:
        inherited = _signature(tree, bases[0])
        required |= inherited.required - passed - accepted
        accepted |= inherited.accepted
    return Signature(accepted, required)


def _configs(node: object) -> list[dict]:
    """Every {"target": ...} mapping in a parsed yaml, nested ones included."""
    found = []
    if isinstance(node, dict):
        if "target" in node:
            found.append(node)
        for value in node.values():
            found += _configs(value)
    elif isinstance(node, list):
        for value in node:
            found += _configs(value)
    return found


@pytest.mark.parametrize(
    ("family", "prediction"),
    [
        ("sd1", "epsilon"),
        ("sd2", "epsilon"),
        ("sd2", "v_prediction"),
        ("sdxl", "epsilon"),
        ("sdxl", "v_prediction"),
    ],
)
def test_written_yaml_gives_each_class_exactly_what_it_accepts(webui_repositories, family, prediction):
    spec = tiny_spec(family)
    scheduler = {**spec.scheduler, "prediction_type": prediction}
    texts = [te.config for te in spec.text_encoders]
    written = yaml.safe_load(
        yaml_text(family, spec.unet, spec.vae, scheduler, texts, clip_version="models/c")
    )
    checked = []
    for config in _configs(written):
        if config["target"] == "torch.nn.Identity":
            continue
        found = _find_class(webui_repositories, config["target"])
        assert found is not None, f"{config['target']} is not a class of the WebUI's repositories"
        signature = _signature(*found)
        given = set(config.get("params", {}))
        assert given <= signature.accepted, (config["target"], given - signature.accepted)
        assert signature.required <= given, (config["target"], signature.required - given)
        checked.append(config["target"].rsplit(".", 1)[1])
    kind = "V" if prediction == "v_prediction" else "Eps"
    if family == "sdxl":
        assert {"UNetModel", "DiscreteDenoiser", f"{kind}Weighting", f"{kind}Scaling"} <= set(checked)
    else:
        assert {"LatentDiffusion", "UNetModel", "AutoencoderKL"} <= set(checked)


def test_signatures_catch_a_rejected_and_a_missing_parameter(webui_repositories):
    unet = _signature(*_find_class(webui_repositories, "sgm.modules.diffusionmodules.openaimodel.UNetModel"))
    denoiser = _signature(
        *_find_class(webui_repositories, "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser")
    )
    latent = _signature(*_find_class(webui_repositories, "ldm.models.diffusion.ddpm.LatentDiffusion"))
    assert "image_size" not in unet.accepted and "adm_in_channels" in unet.accepted
    assert {"weighting_config", "scaling_config", "num_idx", "discretization_config"} <= denoiser.required
    # LatentDiffusion forwards **kwargs to DDPM: DDPM's parameters count, its own pops too
    assert {"unet_config", "first_stage_config"} <= latent.required
    assert {"image_size", "parameterization", "ckpt_path"} <= latent.accepted


@pytest.mark.parametrize(("family_spec", "layer"), [("tiny", 1), ("standard", 11)])
def test_sdxl_clip_l_layer_is_the_penultimate_of_its_tower(family_spec, layer):
    spec = tiny_spec("sdxl") if family_spec == "tiny" else standard_spec("sdxl")
    texts = [te.config for te in spec.text_encoders]
    written = yaml.safe_load(yaml_text("sdxl", spec.unet, spec.vae, spec.scheduler, texts))
    clip_l = written["model"]["params"]["conditioner_config"]["params"]["emb_models"][0]
    # 11 of CLIP-L's 12 layers is what the WebUI's own sd_xl_base.yaml says
    assert clip_l["params"] == {"layer": "hidden", "layer_idx": layer}
