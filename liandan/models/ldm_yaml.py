"""A1111's same-named .yaml beside a checkpoint: LDM (SD1/SD2) or sgm (SDXL) configs <-> our ModelSpec.

Reading honours what A1111 reads for non-standard shapes: `unet_config` / `network_config`,
`first_stage_config.ddconfig`, `scale_factor`, `parameterization`, the beta schedule, and for SD1 the
`cond_stage_config` `version` folder (a transformers CLIP folder, relative to the WebUI root). Text widths
the yaml cannot express are inferred from the weights by the loader. Writing produces a yaml whose every
`params` holds exactly what ldm's / sgm's classes accept, as A1111 v1.10.1 builds the model from it; the
OpenCLIP towers are named by open_clip architecture (SD2: ViT-H-14, SDXL: ViT-bigG-14), as A1111's configs do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from liandan.errors import CheckpointError
from liandan.models.bundle import Family


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return data["model"]["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: not a readable LDM model config ({error})") from error


def _unet_from_params(p: dict[str, Any], adm_time_dim: int | None) -> dict[str, Any]:
    base = p["model_channels"]
    blocks = [base * m for m in p["channel_mult"]]
    attention = [2**level in p["attention_resolutions"] for level in range(len(blocks))]
    depth = p.get("transformer_depth", 1)
    depths = depth if isinstance(depth, list) else [depth] * len(blocks)
    head_channels = p.get("num_head_channels", -1)
    heads: int | list[int] = p.get("num_heads", -1)
    if head_channels not in (-1, None):
        heads = [width // head_channels for width in blocks]
    config: dict[str, Any] = {
        "in_channels": p["in_channels"],
        "out_channels": p["out_channels"],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": blocks,
        "layers_per_block": p["num_res_blocks"],
        "cross_attention_dim": p["context_dim"],
        "attention_head_dim": heads,
        "use_linear_projection": bool(p.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": depths,
    }
    if "image_size" in p:  # ldm's UNet records it (unused there); sgm's has no such parameter
        config["sample_size"] = p["image_size"]
    if p.get("adm_in_channels"):
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=adm_time_dim or 256,
            projection_class_embeddings_input_dim=p["adm_in_channels"],
        )
    return config


def _vae_from_params(p: dict[str, Any], scale_factor: float) -> dict[str, Any]:
    dd = p["ddconfig"]
    levels = len(dd["ch_mult"])
    return {
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
        "layers_per_block": dd["num_res_blocks"],
        "latent_channels": p["embed_dim"],
        "sample_size": dd["resolution"],
        "scaling_factor": scale_factor,
    }


def configs_from_yaml(params: dict[str, Any]) -> dict[str, Any]:
    """{"unet", "vae", "scheduler", "prediction_type", "clip_version"} overrides read from a yaml's params."""
    time_dim = None
    for embedder in params.get("conditioner_config", {}).get("params", {}).get("emb_models", []):
        if embedder.get("target", "").endswith("ConcatTimestepEmbedderND"):
            time_dim = embedder["params"]["outdim"]
    unet_params = (params.get("unet_config") or params.get("network_config"))["params"]
    prediction = "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    schedule = params  # ldm: LatentDiffusion's own parameters
    if "denoiser_config" in params:  # sgm: the denoiser's scaling class and discretization
        denoiser = params["denoiser_config"].get("params", {})
        scaling = denoiser.get("scaling_config", {}).get("target", "")
        prediction = "v_prediction" if scaling.endswith("VScaling") else "epsilon"
        discretization = denoiser.get("discretization_config", {}).get("params", {})
        schedule = {**discretization, "timesteps": denoiser.get("num_idx", 1000)}
    cond = params.get("cond_stage_config") or {}
    return {
        "unet": _unet_from_params(unet_params, time_dim),
        "vae": _vae_from_params(params["first_stage_config"]["params"], params.get("scale_factor", 0.18215)),
        "scheduler": {
            "beta_start": schedule.get("linear_start", 0.00085),
            "beta_end": schedule.get("linear_end", 0.012),
            "num_train_timesteps": schedule.get("timesteps", 1000),
        },
        "prediction_type": prediction,
        "clip_version": (cond.get("params") or {}).get("version"),
    }


def _unet_params(unet: dict[str, Any], context_dim: int) -> dict[str, Any]:
    blocks = list(unet["block_out_channels"])
    base = blocks[0]
    heads = unet["attention_head_dim"]
    params: dict[str, Any] = {
        "in_channels": unet["in_channels"],
        "out_channels": unet["out_channels"],
        "model_channels": base,
        "attention_resolutions": [
            2**level for level, kind in enumerate(unet["down_block_types"]) if "CrossAttn" in kind
        ],
        "num_res_blocks": unet["layers_per_block"],
        "channel_mult": [width // base for width in blocks],
        "use_spatial_transformer": True,
        "transformer_depth": unet.get("transformer_layers_per_block", 1),
        "context_dim": context_dim,
        "use_linear_in_transformer": unet["use_linear_projection"],
        "legacy": False,
    }
    if isinstance(heads, (list, tuple)):
        params["num_head_channels"] = blocks[0] // heads[0]
    else:
        params["num_heads"] = heads
    if unet.get("addition_embed_type") == "text_time":
        params.update(adm_in_channels=unet["projection_class_embeddings_input_dim"], num_classes="sequential")
    return params


def _first_stage(vae: dict[str, Any], target: str) -> dict[str, Any]:
    base = vae["block_out_channels"][0]
    return {
        "target": target,
        "params": {
            "embed_dim": vae["latent_channels"],
            "monitor": "val/rec_loss",
            "ddconfig": {
                "double_z": True,
                "z_channels": vae["latent_channels"],
                "resolution": vae["sample_size"],
                "in_channels": vae["in_channels"],
                "out_ch": vae["out_channels"],
                "ch": base,
                "ch_mult": [w // base for w in vae["block_out_channels"]],
                "num_res_blocks": vae["layers_per_block"],
                "attn_resolutions": [],
                "dropout": 0.0,
            },
            "lossconfig": {"target": "torch.nn.Identity"},
        },
    }


def yaml_text(
    family: Family,
    unet: dict[str, Any],
    vae: dict[str, Any],
    scheduler: dict[str, Any],
    text_encoders: list[dict[str, Any]],
    clip_version: str | None = None,
) -> str:
    """An A1111 model .yaml for these configs (`text_encoders`: the towers' transformers configs, in order).
    SD1's `clip_version` names a transformers CLIP folder."""
    import yaml

    unet_params = _unet_params(unet, sum(config["hidden_size"] for config in text_encoders))
    v_prediction = scheduler["prediction_type"] == "v_prediction"
    beta = {"linear_start": scheduler["beta_start"], "linear_end": scheduler["beta_end"]}
    if family == "sdxl":
        time_dim = unet["addition_time_embed_dim"]
        # A1111 takes CLIP-L's hidden state number layer_idx (0 = the embeddings): its penultimate layer
        clip_l_layer = text_encoders[0]["num_hidden_layers"] - 1
        text = [
            {
                "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
                "is_trainable": False,
                "input_key": "txt",
                "params": {"layer": "hidden", "layer_idx": clip_l_layer},
            },
            {
                "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
                "is_trainable": False,
                "input_key": "txt",
                "params": {
                    "arch": "ViT-bigG-14",
                    "version": "laion2b_s39b_b160k",
                    "freeze": True,
                    "layer": "penultimate",
                    "always_return_pooled": True,
                    "legacy": False,
                },
            },
        ]
        time = [
            {
                "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
                "is_trainable": False,
                "input_key": key,
                "params": {"outdim": time_dim},
            }
            for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")
        ]
        kind = "V" if v_prediction else "Eps"
        diffusion = "sgm.modules.diffusionmodules"
        params = {
            "scale_factor": vae["scaling_factor"],
            "disable_first_stage_autocast": True,
            "denoiser_config": {
                "target": f"{diffusion}.denoiser.DiscreteDenoiser",
                "params": {
                    "num_idx": scheduler["num_train_timesteps"],
                    "weighting_config": {"target": f"{diffusion}.denoiser_weighting.{kind}Weighting"},
                    "scaling_config": {"target": f"{diffusion}.denoiser_scaling.{kind}Scaling"},
                    "discretization_config": {
                        "target": f"{diffusion}.discretizer.LegacyDDPMDiscretization",
                        "params": {**beta, "num_timesteps": scheduler["num_train_timesteps"]},
                    },
                },
            },
            "network_config": {
                "target": f"{diffusion}.openaimodel.UNetModel",
                "params": {**unet_params, "spatial_transformer_attn_type": "softmax-xformers"},
            },
            "conditioner_config": {
                "target": "sgm.modules.GeneralConditioner",
                "params": {"emb_models": text + time},
            },
            # sgm's wrapper: its encode() returns the latents DiffusionEngine.encode_first_stage scales
            "first_stage_config": _first_stage(vae, "sgm.models.autoencoder.AutoencoderKLInferenceWrapper"),
        }
        target = "sgm.models.diffusion.DiffusionEngine"
    else:
        if family == "sd1":
            cond = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}
            if clip_version:
                cond["params"] = {"version": clip_version}
        else:
            cond = {
                "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                "params": {"freeze": True, "layer": "penultimate"},
            }
        params = {
            **beta,
            "num_timesteps_cond": 1,
            "log_every_t": 200,
            "timesteps": scheduler["num_train_timesteps"],
            "first_stage_key": "jpg",
            "cond_stage_key": "txt",
            "image_size": unet["sample_size"],
            "channels": unet["in_channels"],
            "cond_stage_trainable": False,
            "conditioning_key": "crossattn",
            "monitor": "val/loss_simple_ema",
            "scale_factor": vae["scaling_factor"],
            "use_ema": False,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {**unet_params, "image_size": unet["sample_size"], "use_checkpoint": False},
            },
            "first_stage_config": _first_stage(vae, "ldm.models.autoencoder.AutoencoderKL"),
            "cond_stage_config": cond,
        }
        if v_prediction:
            params["parameterization"] = "v"
        target = "ldm.models.diffusion.ddpm.LatentDiffusion"
    header = "# written by liandan: the architecture of the checkpoint beside this file\n"
    return header + yaml.safe_dump({"model": {"target": target, "params": params}}, sort_keys=False)
