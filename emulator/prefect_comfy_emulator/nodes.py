"""The node classes the emulator knows: ComfyUI core nodes (inputs and output types as in ComfyUI
0.3.x) plus two of its own, ``EmulatorFail`` and ``EmulatorSleep``, and the built-in model catalogue.

Example:
    >>> from prefect_comfy_emulator.nodes import NODE_CLASSES
    >>> NODE_CLASSES["CheckpointLoaderSimple"].outputs
    ('MODEL', 'CLIP', 'VAE')
"""

from __future__ import annotations

from dataclasses import dataclass, field

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
"""Input types that hold a value; every other type is a socket that takes a link."""

SAMPLERS: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "gradient_estimation", "er_sde", "seeds_2", "seeds_3", "sa_solver", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip
SCHEDULERS: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
)  # fmt: skip
IMAGE_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")

MODEL_CATALOGUE: dict[str, tuple[str, ...]] = {
    "checkpoint": (
        "v1-5-pruned-emaonly.safetensors",
        "v1-5-pruned-emaonly-fp16.safetensors",
        "sd_xl_base_1.0.safetensors",
        "sd_xl_refiner_1.0.safetensors",
    ),
    "vae": ("vae-ft-mse-840000-ema-pruned.safetensors", "sdxl_vae.safetensors"),
    "lora": ("emulator-example-lora.safetensors",),
    "controlnet": ("control_v11p_sd15_canny.pth",),
    "upscaler": ("RealESRGAN_x4plus.pth", "4x-UltraSharp.pth"),
    "clip": ("clip_l.safetensors", "t5xxl_fp16.safetensors"),
    "unet": ("flux1-dev.safetensors",),
    "diffusion_model": ("flux1-dev.safetensors",),
    "embedding": (),
}
"""Model names every account can use without uploading them, by model type."""


@dataclass(frozen=True)
class InputSpec:
    """One input of a node class.

    Attributes:
        type: ``INT``, ``FLOAT``, ``STRING``, ``BOOLEAN``, ``COMBO`` or a socket type (``MODEL`` …).
        choices: the allowed values of a ``COMBO`` with a fixed list.
        model_types: for a model name: the model types whose names it accepts.
        uploaded_input: for an image name: it must name a ready input of the account.
        min, max: the range of a number.
    """

    type: str
    choices: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    uploaded_input: bool = False
    min: float | None = None
    max: float | None = None

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES


@dataclass(frozen=True)
class NodeClass:
    """A node class: its inputs, its output types, and whether it is an output node."""

    name: str
    required: dict[str, InputSpec]
    optional: dict[str, InputSpec] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    output_node: bool = False
    description: str = ""


def _int(lo: float | None = None, hi: float | None = None) -> InputSpec:
    return InputSpec("INT", min=lo, max=hi)


def _float(lo: float | None = None, hi: float | None = None) -> InputSpec:
    return InputSpec("FLOAT", min=lo, max=hi)


def _combo(*choices: str) -> InputSpec:
    return InputSpec("COMBO", choices=tuple(choices))


def _model(*types: str) -> InputSpec:
    return InputSpec("COMBO", model_types=types)


def _sock(kind: str) -> InputSpec:
    return InputSpec(kind)


STRING = InputSpec("STRING")
SEED = _int(0, 0xFFFFFFFFFFFFFFFF)
STEPS = _int(1, 10000)
SIDE = _int(16, 16384)
IMAGE_SIDE = _int(1, 16384)
BATCH = _int(1, 4096)
MODEL, CLIP, VAE = _sock("MODEL"), _sock("CLIP"), _sock("VAE")
COND, LATENT, IMAGE, MASK = _sock("CONDITIONING"), _sock("LATENT"), _sock("IMAGE"), _sock("MASK")
_SAMPLING = {
    "cfg": _float(0, 100),
    "sampler_name": _combo(*SAMPLERS),
    "scheduler": _combo(*SCHEDULERS),
    "positive": COND,
    "negative": COND,
    "latent_image": LATENT,
}

_CLASSES: list[NodeClass] = [
    NodeClass(
        "CheckpointLoaderSimple",
        {"ckpt_name": _model("checkpoint")},
        outputs=("MODEL", "CLIP", "VAE"),
    ),
    NodeClass("CLIPTextEncode", {"text": STRING, "clip": CLIP}, outputs=("CONDITIONING",)),
    NodeClass(
        "CLIPSetLastLayer", {"clip": CLIP, "stop_at_clip_layer": _int(-24, -1)}, outputs=("CLIP",)
    ),
    NodeClass(
        "ConditioningCombine",
        {"conditioning_1": COND, "conditioning_2": COND},
        outputs=("CONDITIONING",),
    ),
    NodeClass(
        "EmptyLatentImage",
        {"width": SIDE, "height": SIDE, "batch_size": BATCH},
        outputs=("LATENT",),
    ),
    NodeClass(
        "KSampler",
        {"model": MODEL, "seed": SEED, "steps": STEPS, **_SAMPLING, "denoise": _float(0, 1)},
        outputs=("LATENT",),
        description="runs `steps` steps of step_duration each",
    ),
    NodeClass(
        "KSamplerAdvanced",
        {
            "model": MODEL,
            "add_noise": _combo("enable", "disable"),
            "noise_seed": SEED,
            "steps": STEPS,
            **_SAMPLING,
            "start_at_step": _int(0, 10000),
            "end_at_step": _int(0, 10000),
            "return_with_leftover_noise": _combo("disable", "enable"),
        },
        outputs=("LATENT",),
        description="runs `steps` steps of step_duration each",
    ),  # fmt: skip
    NodeClass("VAEDecode", {"samples": LATENT, "vae": VAE}, outputs=("IMAGE",)),
    NodeClass("VAEEncode", {"pixels": IMAGE, "vae": VAE}, outputs=("LATENT",)),
    NodeClass(
        "VAEEncodeForInpaint",
        {"pixels": IMAGE, "vae": VAE, "mask": MASK, "grow_mask_by": _int(0, 64)},
        outputs=("LATENT",),
    ),
    NodeClass("SetLatentNoiseMask", {"samples": LATENT, "mask": MASK}, outputs=("LATENT",)),
    NodeClass("SaveImage", {"images": IMAGE, "filename_prefix": STRING}, output_node=True),
    NodeClass("PreviewImage", {"images": IMAGE}, output_node=True),
    NodeClass(
        "LoadImage", {"image": InputSpec("COMBO", uploaded_input=True)}, outputs=("IMAGE", "MASK")
    ),
    NodeClass(
        "LoadImageMask",
        {
            "image": InputSpec("COMBO", uploaded_input=True),
            "channel": _combo("alpha", "red", "green", "blue"),
        },
        outputs=("MASK",),
    ),
    NodeClass(
        "EmptyImage",
        {
            "width": IMAGE_SIDE,
            "height": IMAGE_SIDE,
            "batch_size": BATCH,
            "color": _int(0, 0xFFFFFF),
        },
        outputs=("IMAGE",),
    ),
    NodeClass(
        "ImageBlur",
        {"image": IMAGE, "blur_radius": _int(1, 31), "sigma": _float(0.1, 10)},
        outputs=("IMAGE",),
    ),
    NodeClass(
        "ImageSharpen",
        {
            "image": IMAGE,
            "sharpen_radius": _int(1, 31),
            "sigma": _float(0.1, 10),
            "alpha": _float(0, 5),
        },
        outputs=("IMAGE",),
    ),
    NodeClass("ImageInvert", {"image": IMAGE}, outputs=("IMAGE",)),
    NodeClass(
        "ImageScale",
        {
            "image": IMAGE,
            "upscale_method": _combo(*IMAGE_UPSCALE_METHODS),
            "width": _int(0, 16384),
            "height": _int(0, 16384),
            "crop": _combo("disabled", "center"),
        },
        outputs=("IMAGE",),
    ),  # fmt: skip
    NodeClass(
        "ImageScaleBy",
        {
            "image": IMAGE,
            "upscale_method": _combo(*IMAGE_UPSCALE_METHODS),
            "scale_by": _float(0.01, 8),
        },
        outputs=("IMAGE",),
    ),
    NodeClass(
        "ImageCrop",
        {
            "image": IMAGE,
            "width": IMAGE_SIDE,
            "height": IMAGE_SIDE,
            "x": _int(0, 16384),
            "y": _int(0, 16384),
        },
        outputs=("IMAGE",),
    ),
    NodeClass(
        "LatentUpscale",
        {
            "samples": LATENT,
            "upscale_method": _combo(*LATENT_UPSCALE_METHODS),
            "width": _int(0, 16384),
            "height": _int(0, 16384),
            "crop": _combo("disabled", "center"),
        },
        outputs=("LATENT",),
    ),  # fmt: skip
    NodeClass(
        "LatentUpscaleBy",
        {
            "samples": LATENT,
            "upscale_method": _combo(*LATENT_UPSCALE_METHODS),
            "scale_by": _float(0.01, 8),
        },
        outputs=("LATENT",),
    ),
    NodeClass(
        "LoraLoader",
        {
            "model": MODEL,
            "clip": CLIP,
            "lora_name": _model("lora"),
            "strength_model": _float(-100, 100),
            "strength_clip": _float(-100, 100),
        },
        outputs=("MODEL", "CLIP"),
    ),  # fmt: skip
    NodeClass(
        "LoraLoaderModelOnly",
        {"model": MODEL, "lora_name": _model("lora"), "strength_model": _float(-100, 100)},
        outputs=("MODEL",),
    ),
    NodeClass("VAELoader", {"vae_name": _model("vae")}, outputs=("VAE",)),
    NodeClass(
        "CLIPLoader",
        {"clip_name": _model("clip"), "type": STRING},
        optional={"device": _combo("default", "cpu")},
        outputs=("CLIP",),
    ),
    NodeClass(
        "UNETLoader",
        {
            "unet_name": _model("unet", "diffusion_model"),
            "weight_dtype": _combo("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"),
        },
        outputs=("MODEL",),
    ),
    NodeClass(
        "ControlNetLoader", {"control_net_name": _model("controlnet")}, outputs=("CONTROL_NET",)
    ),
    NodeClass(
        "ControlNetApply",
        {
            "conditioning": COND,
            "control_net": _sock("CONTROL_NET"),
            "image": IMAGE,
            "strength": _float(0, 10),
        },
        outputs=("CONDITIONING",),
    ),
    NodeClass(
        "ControlNetApplyAdvanced",
        {
            "positive": COND,
            "negative": COND,
            "control_net": _sock("CONTROL_NET"),
            "image": IMAGE,
            "strength": _float(0, 10),
            "start_percent": _float(0, 1),
            "end_percent": _float(0, 1),
        },
        optional={"vae": VAE},
        outputs=("CONDITIONING", "CONDITIONING"),
    ),  # fmt: skip
    NodeClass("UpscaleModelLoader", {"model_name": _model("upscaler")}, outputs=("UPSCALE_MODEL",)),
    NodeClass(
        "ImageUpscaleWithModel",
        {"upscale_model": _sock("UPSCALE_MODEL"), "image": IMAGE},
        outputs=("IMAGE",),
        description="multiplies the image size by 4 (within max_image_side)",
    ),
    NodeClass(
        "EmulatorFail",
        {"message": STRING},
        optional={"code": STRING, "after_steps": _int(0, 100000)},
        output_node=True,
        description="emulator only: passes validation, then fails the job when it runs",
    ),
    NodeClass(
        "EmulatorSleep",
        {"seconds": _float(0, 3600)},
        optional={"images": IMAGE},
        outputs=("IMAGE",),
        output_node=True,
        description="emulator only: runs for `seconds` in steps of at most 0.05 s (each a cancel checkpoint)",
    ),
]

NODE_CLASSES: dict[str, NodeClass] = {node.name: node for node in _CLASSES}
"""Every node class the emulator accepts, by ``class_type``."""

SAMPLER_CLASSES = frozenset({"KSampler", "KSamplerAdvanced"})
"""Node classes that run ``steps`` steps."""
EMULATOR_SLEEP_SLICE = 0.05
"""Longest step of an ``EmulatorSleep`` node, in seconds."""
