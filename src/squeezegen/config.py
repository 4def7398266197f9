"""params.yaml → validated, typed, frozen per-stage config.

`params.yaml` has method knobs at the top level and scale knobs under `profiles.<name>`; the
active profile's knobs are merged in (a key in both places is an error, so `dvc exp run -S`
always takes effect). Every section below is a frozen dataclass; the generic parser rejects
unknown keys, wrong types and out-of-range values with one message that names the key path and
what is allowed. This module imports no torch, so the CLI starts fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from squeezegen.errors import ConfigError

PARAMS_FILE = "params.yaml"


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    return field(metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open})


# ----------------------------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """fetch_data + preprocess."""

    source: Literal["synthetic", "lapis", "folder"]
    num_images: int = _range(0)
    max_images: int | None = _range(1)
    sd_size: int = _range(8)
    rq_size: int = _range(8)
    val_fraction: float = _range(0.0, 1.0, lo_open=True, hi_open=True)
    min_score: float | None = _range(0.0, 100.0)
    max_image_pixels: int = _range(1)
    lapis_path: str = ""
    folder_path: str = ""

    def check(self, path: str) -> None:
        if self.sd_size % 8:
            raise ConfigError(f"{path}.sd_size: must be a multiple of 8 (the SD VAE downsamples 8x), got {self.sd_size}")
        if self.source == "synthetic" and self.num_images < 2:
            raise ConfigError(f"{path}.num_images: the synthetic source needs at least 2 images, got {self.num_images}")


@dataclass(frozen=True, kw_only=True)
class SDConfig:
    """fetch_base + generation settings shared by the SD stages."""

    base: str
    infer_steps: int = _range(1, 1000)
    prompt_template: str = "{caption}"

    def check(self, path: str) -> None:
        if "{caption}" not in self.prompt_template:
            raise ConfigError(f"{path}.prompt_template: must contain '{{caption}}', got {self.prompt_template!r}")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """fetch_base with `sd.base: tiny`: pretraining the tiny pipeline's VAE, then its UNet."""

    vae_lr: float = _range(0.0, 1.0, lo_open=True)
    kl_weight: float = _range(0.0)
    unet_lr: float = _range(0.0, 1.0, lo_open=True)
    caption_dropout: float = _range(0.0, 1.0, hi_open=True)
    warmup_steps: int = _range(0)
    checkpoint_every: int = _range(1)
    vae_steps: int = _range(1)
    vae_batch_size: int = _range(1)
    unet_steps: int = _range(1)
    unet_batch_size: int = _range(1)


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """finetune_lora."""

    rank: int = _range(1, 1024)
    alpha: float = _range(0.0, lo_open=True)
    target_modules: tuple[str, ...] = ()
    lr: float = _range(0.0, 1.0, lo_open=True)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = _range(0)
    weight_decay: float = _range(0.0)
    max_grad_norm: float = _range(0.0, lo_open=True)
    grad_accum: int = _range(1)
    min_snr_gamma: float | None = _range(0.0, lo_open=True)
    # "fp32" rather than accelerate's "no": a bare `no` in YAML 1.1 reads as false (and DVC's
    # `exp run -S` writes strings unquoted), so the config keeps to unambiguous words.
    mixed_precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    checkpoint_every: int = _range(1)
    sample_prompts: int = _range(1, 64)
    rating_in_caption: bool = True
    max_steps: int = _range(1)
    batch_size: int = _range(1)
    num_workers: int = _range(0)

    def check(self, path: str) -> None:
        if not self.target_modules:
            raise ConfigError(f"{path}.target_modules: list at least one module name, e.g. [to_q, to_k, to_v, to_out.0]")


@dataclass(frozen=True, kw_only=True)
class QuantizeConfig:
    """quantize."""

    unet_type: Literal["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16"]
    fallback_type: Literal["Q8_0", "F16"]
    keep_type: Literal["F16", "F32"]
    keep_patterns: tuple[str, ...]
    min_elements: int = _range(0)
    reshape_convs: bool = True
    text_encoder_8bit: bool = True
    key_format: Literal["ldm", "diffusers"] = "ldm"
    importance: Literal["none", "activations"] = "none"
    calib_prompts: int = _range(1)
    calib_steps: int = _range(1)
    calib_guidance: float = _range(0.0)
    budget_bpw: float | None = _range(0.0, lo_open=True)
    budget_bytes: int | None = _range(1)
    candidate_types: tuple[Literal["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"], ...]
    sensitivity: Literal["measured", "proxy"] = "measured"
    sensitivity_samples: int = _range(1)
    baselines: bool = False

    def check(self, path: str) -> None:
        if self.budget_bpw is not None and self.budget_bytes is not None:
            raise ConfigError(f"{path}.budget_bpw / budget_bytes: both are set; set one of them (or neither for the "
                              "uniform unet_type)")
        if not self.candidate_types:
            raise ConfigError(f"{path}.candidate_types: needs at least one type for the budget allocation")

        for i, pattern in enumerate(self.keep_patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{path}.keep_patterns[{i}]: not a valid regular expression ({exc}): {pattern!r}") from None


BENCHMARK_CONFIGS = ("fp16", "q4k_unet", "q4k_unet_int8_clip", "q4k_unet_int8_clip_cpu_vae")


@dataclass(frozen=True, kw_only=True)
class BenchmarkConfig:
    """benchmark."""

    configs: tuple[Literal["fp16", "q4k_unet", "fp16_cuda_graph", "q4k_unet_cuda_graph",
                           "q4k_unet_int8_clip", "q4k_unet_int8_clip_cpu_vae",
                           "q4k_unet_int8_clip_tiled_vae", "lean", "lean_cfg_batch", "lean_tiny_vae",
                           "fp16_model_offload", "fp16_sequential_offload"], ...]
    compute_dtype: Literal["float16", "bfloat16", "float32"]
    cpu_dtype: Literal["fp32", "bf16", "auto"] = "auto"
    guidance_scale: float = _range(0.0)
    repeats: int = _range(1)
    arch: Literal["pipeline", "sd15"] = "pipeline"
    size: int = _range(8)
    vae_tile_px: int = _range(32)
    lean_text_encoder: Literal["cpu", "device"] = "cpu"
    tiny_vae: str = "config"

    def check(self, path: str) -> None:
        if "fp16" not in self.configs:
            raise ConfigError(f"{path}.configs: must include 'fp16' (the baseline every drift and ratio is measured against)")
        if self.size % 8:
            raise ConfigError(f"{path}.size: must be a multiple of 8, got {self.size}")
        if self.vae_tile_px % 32:
            raise ConfigError(f"{path}.vae_tile_px: must be a multiple of 32 (4 latent pixels: diffusers' tiled "
                              f"decode keeps the image size only then), got {self.vae_tile_px}")


@dataclass(frozen=True, kw_only=True)
class RQVAEConfig:
    """train_rqvae."""

    levels: int = _range(1, 64)
    scales: Literal["equal", "pyramid"] | tuple[int, ...] = "equal"
    first_side: int = _range(1)
    codebook_size: int = _range(2, 1 << 20)
    code_dim: int = _range(1)
    shared_codebook: bool = False
    ema_decay: float = _range(0.0, 1.0, hi_open=True)
    kmeans_init: bool = True
    dead_code_threshold: float = _range(0.0)
    quantize_dropout: bool = False
    commitment_weight: float = _range(0.0)
    norm_groups: int = _range(0)
    padding_mode: Literal["zeros", "replicate", "reflect"]
    recon_loss: Literal["l1", "l2"] = "l1"
    lpips_weight: float = _range(0.0)
    lr: float = _range(0.0, 1.0, lo_open=True)
    warmup_steps: int = _range(0)
    max_grad_norm: float = _range(0.0, lo_open=True)
    checkpoint_every: int = _range(1)
    downsample: int = _range(1)
    channels: tuple[int, ...] = ()
    max_steps: int = _range(1)
    batch_size: int = _range(1)

    def check(self, path: str) -> None:
        if self.downsample & (self.downsample - 1):
            raise ConfigError(f"{path}.downsample: must be a power of two (1, 2, 4, 8, 16...), got {self.downsample}")
        want = int(math.log2(self.downsample)) + 1
        if len(self.channels) != want or min(self.channels, default=0) < 1:
            raise ConfigError(
                f"{path}.channels: needs log2(downsample)+1 = {want} positive entries (one per resolution), "
                f"got {list(self.channels)}"
            )
        if isinstance(self.scales, tuple):
            if len(self.scales) != self.levels:
                example = [max(1, self.scales[-1] >> (self.levels - 1 - k)) for k in range(self.levels)] if self.scales else []
                raise ConfigError(
                    f"{path}.scales: lists {len(self.scales)} grid sides {list(self.scales)} but {path}.levels is {self.levels}; "
                    f"change both (e.g. -S {path}.levels={self.levels} -S '{path}.scales={example}') or use scales: pyramid | equal"
                )
            if min(self.scales) < 1 or list(self.scales) != sorted(self.scales):
                raise ConfigError(f"{path}.scales: list grid sides ≥ 1, coarse to fine, got {list(self.scales)}; or use equal | pyramid")


@dataclass(frozen=True, kw_only=True)
class RefinerConfig:
    """train_refiner."""

    lpips_weight: float = _range(0.0)
    lr: float = _range(0.0, 1.0, lo_open=True)
    warmup_steps: int = _range(0)
    max_grad_norm: float = _range(0.0, lo_open=True)
    checkpoint_every: int = _range(1)
    channels: tuple[int, ...] = ()
    max_steps: int = _range(1)
    batch_size: int = _range(1)
    lpips_pretrained: bool = False

    def check(self, path: str) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"{path}.channels: list one or more positive channel counts, got {list(self.channels)}")

    @property
    def lpips_name(self) -> str:
        """Metric name: plain `lpips` only with the pretrained backbone."""
        return "lpips" if self.lpips_pretrained else "lpips_randnet"


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """evaluate."""

    num_prompts: int = _range(1, 64)
    num_progressive: int = _range(1, 64)
    gen_samples: int = _range(2)
    gen_seeds: int = _range(1)


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    """train_judge: the style / genre / score referee (a small CNN on real images only)."""

    lr: float = _range(0.0, 1.0, lo_open=True)
    warmup_steps: int = _range(0)
    weight_decay: float = _range(0.0)
    max_grad_norm: float = _range(0.0, lo_open=True)
    style_weight: float = _range(0.0)
    genre_weight: float = _range(0.0)
    score_weight: float = _range(0.0)
    label_smoothing: float = _range(0.0, 1.0, hi_open=True)
    flip: bool = True
    shift: int = _range(0)
    dropout: float = _range(0.0, 1.0, hi_open=True)
    checkpoint_every: int = _range(1)
    channels: tuple[int, ...] = ()
    max_steps: int = _range(1)
    batch_size: int = _range(1)

    def check(self, path: str) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"{path}.channels: list one or more positive channel counts, got {list(self.channels)}")
        if self.style_weight + self.genre_weight + self.score_weight <= 0:
            raise ConfigError(f"{path}: style_weight, genre_weight and score_weight are all 0; give at least one a weight")


@dataclass(frozen=True, kw_only=True)
class PriorConfig:
    """train_prior (training knobs and sizes) + sampling (guidance, temperature, top_k: evaluate / sample)."""

    kind: Literal["rq_transformer", "next_scale"] = "rq_transformer"
    cond_dropout: float = _range(0.0, 1.0, hi_open=True)
    cond_every_position: bool = True
    cond_modulation: bool = True
    guidance_scale: float = _range(0.0)
    score_guidance_scale: float = _range(0.0)
    temperature: float = _range(0.0, lo_open=True)
    top_k: int | None = _range(1)
    lr: float = _range(0.0, 1.0, lo_open=True)
    warmup_steps: int = _range(0)
    weight_decay: float = _range(0.0)
    max_grad_norm: float = _range(0.0, lo_open=True)
    checkpoint_every: int = _range(1)
    width: int = _range(8)
    heads: int = _range(1)
    spatial_layers: int = _range(1)
    depth_width: int = _range(8)
    depth_layers: int = _range(1)
    max_steps: int = _range(1)
    batch_size: int = _range(1)

    def check(self, path: str) -> None:
        for name in ("width", "depth_width"):
            if getattr(self, name) % self.heads:
                raise ConfigError(f"{path}.{name}: must be divisible by heads={self.heads}, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class ReproConfig:
    """Every stage: strict mode (`squeezegen.strict` applies it before torch loads)."""

    strict: bool = False
    threads: int = _range(1, 1024)
    onednn: bool = False


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole resolved config; each stage reads its own sections."""

    profile: str
    seed: int = _range(0, 2**32 - 1)
    repro: ReproConfig = None  # type: ignore[assignment]
    data: DataConfig = None  # type: ignore[assignment]
    sd: SDConfig = None  # type: ignore[assignment]
    pretrain: PretrainConfig = None  # type: ignore[assignment]
    lora: LoraConfig = None  # type: ignore[assignment]
    quantize: QuantizeConfig = None  # type: ignore[assignment]
    benchmark: BenchmarkConfig = None  # type: ignore[assignment]
    rqvae: RQVAEConfig = None  # type: ignore[assignment]
    refiner: RefinerConfig = None  # type: ignore[assignment]
    evaluate: EvaluateConfig = None  # type: ignore[assignment]
    judge: JudgeConfig = None  # type: ignore[assignment]
    prior: PriorConfig = None  # type: ignore[assignment]

    def check(self, path: str) -> None:
        if self.data.rq_size % self.rqvae.downsample:
            raise ConfigError(
                f"rqvae.downsample: data.rq_size={self.data.rq_size} is not divisible by downsample={self.rqvae.downsample}; "
                "pick a resolution that is a multiple of the downsampling factor"
            )
        side = self.data.rq_size // self.rqvae.downsample
        if isinstance(self.rqvae.scales, tuple) and self.rqvae.scales[-1] != side:
            raise ConfigError(
                f"rqvae.scales: the last level must be the full {side}×{side} grid (data.rq_size / rqvae.downsample), "
                f"got {list(self.rqvae.scales)}"
            )
        unet_div = 2 ** (len(self.refiner.channels) - 1)
        if self.data.rq_size % unet_div:
            raise ConfigError(
                f"refiner.channels: {len(self.refiner.channels)} UNet levels need data.rq_size divisible by {unet_div}, "
                f"got {self.data.rq_size}"
            )

    def section_dict(self, *names: str) -> dict[str, Any]:
        """The named sections as plain nested dicts (for logging)."""
        return {name: _to_plain(getattr(self, name)) for name in names}


# Which sections each stage reads (logged as that stage's MLflow params).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "fetch_data": ("data",),
    "preprocess": ("data",),
    "fetch_base": ("sd", "pretrain"),
    "finetune_lora": ("sd", "lora"),
    "quantize": ("sd", "quantize"),
    "benchmark": ("sd", "quantize", "benchmark"),
    "train_rqvae": ("rqvae", "refiner", "evaluate"),
    "train_refiner": ("refiner", "evaluate"),
    "train_judge": ("judge",),
    "train_prior": ("prior",),
    "evaluate": ("sd", "benchmark", "evaluate", "prior"),
}


# ------------------------------------------------------------------------------------ parsing


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + " or null"
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{path}: must be {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for inner in [a for a in args if a is not type(None)]:
            try:
                return _coerce(value, inner, path)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise bad
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise bad
        (inner, _) = typing.get_args(tp)
        return tuple(_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: must be a mapping of keys, got {value!r}")
        return _parse_dataclass(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _check_range(value: Any, meta: Mapping[str, Any], path: str) -> None:
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    too_low = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
    too_high = hi is not None and (value >= hi if meta.get("hi_open") else value > hi)
    if too_low or too_high:
        left = "" if lo is None else f"{lo} {'<' if meta.get('lo_open') else '<='} "
        right = "" if hi is None else f" {'<' if meta.get('hi_open') else '<='} {hi}"
        raise ConfigError(f"{path}: must satisfy {left}value{right}, got {value!r}")


def _parse_dataclass(cls: type, raw: Mapping[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = path or "the top level"
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f"did you mean {_join(path, close[0])}? " if close else ""
        raise ConfigError(
            f"{_join(path, unknown[0])}: unknown key; {hint}allowed keys in {where}: {', '.join(fields)}"
        )
    values = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name not in raw:
            if f.default is not dataclasses.MISSING and not dataclasses.is_dataclass(hints[name]):
                values[name] = f.default
                continue
            raise ConfigError(f"{key}: missing; set it at the top level (method knob) or in the profile (scale knob)")
        values[name] = _coerce(raw[name], hints[name], key)
        _check_range(values[name], f.metadata, key)
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(path)
    return obj


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _merge_profile(top: Mapping[str, Any], prof: Mapping[str, Any], path: str, prof_path: str) -> dict[str, Any]:
    """Merge a profile's scale knobs into the top-level method knobs; overlap is an error."""
    merged = dict(top)
    for key, value in prof.items():
        here = _join(path, key)
        if key in top:
            if isinstance(value, Mapping) and isinstance(top[key], Mapping):
                merged[key] = _merge_profile(top[key], value, here, _join(prof_path, key))
                continue
            raise ConfigError(
                f"{here}: set both at the top level and in {_join(prof_path, key)}; method knobs belong at the top "
                "level and scale knobs in profiles only — remove one of them"
            )
        merged[key] = value
    return merged


def resolve(raw: Mapping[str, Any], profile: str | None = None) -> Config:
    """Resolve a parsed params.yaml mapping into a validated `Config`."""
    if not isinstance(raw, Mapping):
        raise ConfigError("params.yaml: must be a mapping of keys at the top level")
    raw = dict(raw)
    profiles = raw.pop("profiles", None)
    if not isinstance(profiles, Mapping) or not profiles:
        raise ConfigError("profiles: missing; params.yaml needs a `profiles:` section with at least `toy`")
    chosen = profile if profile is not None else raw.get("profile", "toy")
    if chosen not in profiles:
        raise ConfigError(f"profile: unknown profile {chosen!r}; allowed: {', '.join(map(str, profiles))}")
    for name, prof in profiles.items():  # overlap is an error in every profile, not only the active one
        if not isinstance(prof, Mapping):
            raise ConfigError(f"profiles.{name}: must be a mapping of scale knobs, got {prof!r}")
        _merge_profile(raw, prof, "", f"profiles.{name}")
    merged = _merge_profile(raw, profiles[chosen], "", f"profiles.{chosen}")
    merged["profile"] = chosen
    return _parse_dataclass(Config, merged, "")


def _read_params(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file; run from the project root (where params.yaml lives)")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_config(path: str | Path = PARAMS_FILE, *, profile: str | None = None) -> Config:
    """Read and resolve `params.yaml` (or another file)."""
    return resolve(_read_params(path), profile)


def check_params_file(path: str | Path = PARAMS_FILE) -> list[str]:
    """Validate the whole file: the active profile, then every other one (a typo in a profile not
    in use is still a typo). Returns the profile names; ConfigError on the first problem."""
    raw = _read_params(path)
    resolve(raw)
    names = [str(name) for name in raw.get("profiles") or {}] if isinstance(raw, Mapping) else []
    for name in names:
        resolve(raw, name)
    return names


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what `squeezegen config` prints)."""
    return yaml.safe_dump(_to_plain(cfg), sort_keys=False, default_flow_style=None)
