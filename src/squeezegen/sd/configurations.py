"""Assemble a Stable Diffusion pipeline per memory configuration, and generate with a memory probe.

Configurations (each adds one saving to the previous):

- `fp16`: the base pipeline with the LoRA fused in, everything on the device in half precision
  (on a CPU in its compute dtype, fp32 or bf16: `cpu_dtype`; half precision is slow there);
- `q4k_unet`: the UNet from `quant_dir/unet.gguf` (LoRA already fused in by the quantize stage),
  its Linear and Conv2d weights kept packed and dequantized layer by layer; the rest as fp16;
- `q4k_unet_int8_clip`: + the 8-bit CLIP text encoder from `quant_dir/text_encoder/`;
- `q4k_unet_int8_clip_cpu_vae`: + the VAE kept on the CPU (in the CPU compute dtype): latents are
  generated on the device (`output_type="latent"`), moved to the CPU and decoded there;
- `q4k_unet_int8_clip_tiled_vae`: instead, the VAE on the device in half precision, decoding in
  tiles of `vae_tile_px` (diffusers' AutoencoderKL tiling);
- `lean`: that, plus phase residency (`sd.residency`: each component on the device only for its
  phase; the 8-bit text encoder runs on the CPU unless `lean_text_encoder="device"`) and
  classifier-free guidance as two UNet passes of batch 1; `lean_cfg_batch`: the same with one pass
  of batch 2; `lean_tiny_vae`: `lean` with a tiny decoder (AutoencoderTiny, `tiny_vae`); all three
  serve the UNet step from a CUDA graph (`sd.cuda_graph`), dropped when the UNet leaves the device;
- `fp16_cuda_graph`, `q4k_unet_cuda_graph`: `fp16` and `q4k_unet` with the UNet step in a CUDA graph
  (a CPU has none: there they run eagerly, with a note);
- peers, what a diffusers user would reach for: `fp16_model_offload` (`enable_model_cpu_offload`)
  and `fp16_sequential_offload` (`enable_sequential_cpu_offload` + attention slicing).

Every configuration's recipe is a `ConfigSpec` in `SPECS`.

The prompt is encoded separately (`pipe.encode_prompt`) and the embeddings are cast to the
UNet's compute dtype: the 8-bit text encoder returns its own dtype. Initial noise comes from a
CPU generator, so every configuration and device starts from the same latents for a seed.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from squeezegen.device import CpuDtype, cpu_compute_dtype, default_device
from squeezegen.errors import UserError
from squeezegen.memory.accounting import component_bytes
from squeezegen.memory.probes import PeakMemory, free_memory, measure_peak
from squeezegen.model_folder import check_lora_folder, check_model_files, check_pipeline_folder


@dataclass(frozen=True)
class ConfigSpec:
    """One configuration's recipe. unet: fp16 | q4k; text_encoder: fp16 | int8; vae: device (as loaded) |
    cpu (fp32 on the CPU) | tiled (device, tiled decode) | tiny (AutoencoderTiny, device); placement:
    resident (all on the device) | phase (sd.residency) | model_offload | sequential_offload
    (diffusers' own); cfg: batch (one UNet pass of 2) | serial (two of 1); attention: sdpa | sliced;
    cuda_graph: serve the UNet step from a captured CUDA graph (sd.cuda_graph; CUDA only)."""

    unet: str
    text_encoder: str
    vae: str
    placement: str = "resident"
    cfg: str = "batch"
    attention: str = "sdpa"
    cuda_graph: bool = False


SPECS: dict[str, ConfigSpec] = {
    "fp16": ConfigSpec("fp16", "fp16", "device"),
    "q4k_unet": ConfigSpec("q4k", "fp16", "device"),
    "q4k_unet_int8_clip": ConfigSpec("q4k", "int8", "device"),
    "q4k_unet_int8_clip_cpu_vae": ConfigSpec("q4k", "int8", "cpu"),
    "q4k_unet_int8_clip_tiled_vae": ConfigSpec("q4k", "int8", "tiled"),
    "fp16_cuda_graph": ConfigSpec("fp16", "fp16", "device", cuda_graph=True),
    "q4k_unet_cuda_graph": ConfigSpec("q4k", "fp16", "device", cuda_graph=True),
    "lean": ConfigSpec("q4k", "int8", "tiled", "phase", cfg="serial", cuda_graph=True),
    "lean_cfg_batch": ConfigSpec("q4k", "int8", "tiled", "phase", cfg="batch", cuda_graph=True),
    "lean_tiny_vae": ConfigSpec("q4k", "int8", "tiny", "phase", cfg="serial", cuda_graph=True),
    "fp16_model_offload": ConfigSpec("fp16", "fp16", "device", "model_offload"),
    "fp16_sequential_offload": ConfigSpec("fp16", "fp16", "device", "sequential_offload", attention="sliced"),
}
CONFIGS = tuple(SPECS)
OFFLOAD_PLACEMENTS = ("model_offload", "sequential_offload")  # diffusers' own: need an accelerator to mean anything
DEFAULT_TILE_PX = 256  # tiled VAE decode: tile side in image px (SD 1.5 at 512 px → 3×3 overlapping tiles)
GGUF_NAME = "unet.gguf"
TEXT_ENCODER_DIR = "text_encoder"
PHASES = ("encode", "denoise", "decode")


def resolve_dtype(device: str | torch.device, compute_dtype: str | torch.dtype, cpu_dtype: CpuDtype = "fp32") -> torch.dtype:
    """The dtype a configuration computes in: `compute_dtype` on a GPU, `cpu_dtype` on a CPU
    (fp32 | bf16 | auto: `device.cpu_compute_dtype`)."""
    if torch.device(device).type == "cpu":
        return cpu_compute_dtype(cpu_dtype)
    return getattr(torch, compute_dtype) if isinstance(compute_dtype, str) else compute_dtype


@dataclass
class PipelineBundle:
    """A pipeline built for one configuration, and where its parts live."""

    name: str
    pipe: Any  # diffusers.StableDiffusionPipeline
    device: torch.device
    dtype: torch.dtype
    vae_device: torch.device
    vae_dtype: torch.dtype
    load_seconds: float = 0.0
    load_peak: PeakMemory | None = None
    spec: ConfigSpec | None = None
    residency: Any = None  # sd.residency.PhaseResidency for placement "phase"
    cuda_graph: Any = None  # sd.cuda_graph.CUDAGraphForward serving the UNet step (CUDA configurations with cuda_graph)
    resident: dict[str, dict[str, Any]] | None = None  # component_bytes before offload hooks moved anything
    notes: list[str] = field(default_factory=list)

    def resident_bytes(self) -> dict[str, dict[str, Any]]:
        """Exact bytes of the tensors each component keeps resident (see memory.component_bytes);
        for offloaded configurations, as loaded (on the CPU) before the hooks took over."""
        return self.resident if self.resident is not None else component_bytes(self.pipe)


@dataclass
class Generation:
    """Images from `generate`, the peak memory of each phase, and the seconds per image."""

    images: list[Image.Image]
    seconds: list[float]
    phase_peaks: dict[str, PeakMemory] = field(default_factory=dict)

    def peak(self) -> dict[str, Any]:
        """Worst case over phases: peak allocated/reserved (CUDA), peak RSS, and per-phase peaks."""
        peaks = list(self.phase_peaks.values())

        def worst(attr: str) -> int | None:
            values = [getattr(p, attr) for p in peaks if getattr(p, attr) is not None]
            return max(values) if values else None

        first = peaks[0] if peaks else None
        return {
            "device": first.device if first else "",
            "device_name": first.device_name if first else "",
            "peak_allocated": worst("peak_allocated"),
            "peak_reserved": worst("peak_reserved"),
            "peak_rss": worst("peak_rss"),
            "peak_bytes": max((p.peak_bytes for p in peaks), default=0),
            "rss_method": first.method if first else "",
            "phases": {name: p.as_dict() for name, p in self.phase_peaks.items()},
        }


def _check_dir(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise UserError(f"{path}: {what} not found; {hint}")
    return path


def _load_sd_pipeline(base_dir: Path, dtype: torch.dtype, **components: Any) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        base_dir,
        dtype=dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
        **components,
    )


@contextlib.contextmanager
def _quiet_loading():
    """diffusers/transformers progress bars per component are noise inside a benchmark."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


def _fuse_lora(pipe: Any, lora_dir: Path) -> None:
    """Merge the LoRA into the UNet weights and drop the adapter modules (what quantize does too)."""
    pipe.load_lora_weights(lora_dir)
    pipe.fuse_lora()
    pipe.unload_lora_weights()


def _cast_unquantized(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast the float parameters and buffers of an 8-bit model (embeddings, norms, biases) to `dtype`.

    The pipeline casts prompt embeddings to `text_encoder.dtype` (its first float parameter), so
    that must be the UNet's compute dtype; and loading the 8-bit model with dtype=float32 leaves
    embeddings and norms in fp16 next to fp32 biases, so it is loaded in fp16 and cast here.
    The int8 weights and their fp32 row scales are untouched.
    """
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dtype.is_floating_point and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)
    return model


def build_pipeline(
    config_name: str,
    *,
    base_dir: str | os.PathLike,
    lora_dir: str | os.PathLike | None = None,
    quant_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    compute_dtype: str | torch.dtype = "float16",
    cpu_dtype: CpuDtype = "fp32",
    vae_tile_px: int = DEFAULT_TILE_PX,
    lean_text_encoder: str = "cpu",
    tiny_vae: str = "config",
    seed: int = 0,
) -> PipelineBundle:
    """Build the pipeline of configuration `config_name` (one of CONFIGS; see the module doc).

    base_dir: a diffusers StableDiffusionPipeline folder (tokenizer, scheduler, VAE, text encoder
    and, for fp16, the UNet). lora_dir: LoRA weights fused into the fp16 UNet (the q4k UNet already
    has them). quant_dir: the quantize stage's folder (unet.gguf, text_encoder/). compute_dtype: the
    dtype on a GPU; cpu_dtype: on a CPU (fp32 | bf16 | auto), also for the parts a GPU
    configuration keeps on the CPU (the CPU VAE, the lean text encoder). vae_tile_px: tile
    side of the tiled decode; lean_text_encoder: where `lean*` run the 8-bit text encoder (cpu |
    device); tiny_vae / seed: the AutoencoderTiny source (`sd.lean.build_tiny_vae`). The load is
    measured with `measure_peak` (bundle.load_peak). Raises UserError for a missing folder.
    """
    from squeezegen.sd import lean
    from squeezegen.sd.cuda_graph import enable_cuda_graph

    if config_name not in CONFIGS:
        raise UserError(f"unknown pipeline configuration {config_name!r}; choose one of {', '.join(CONFIGS)}")
    if lean_text_encoder not in ("cpu", "device"):
        raise UserError(f"lean_text_encoder {lean_text_encoder!r}: choose cpu or device")
    spec = SPECS[config_name]
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(device, compute_dtype, cpu_dtype)
    cpu_dtype_resolved = cpu_compute_dtype(cpu_dtype)
    base_dir = check_pipeline_folder(base_dir)
    if spec.unet == "fp16" and lora_dir is not None:
        check_lora_folder(lora_dir)
    vae_device, vae_dtype = (torch.device("cpu"), cpu_dtype_resolved) if spec.vae == "cpu" else (device, dtype)
    te_on_cpu = spec.placement == "phase" and lean_text_encoder == "cpu"
    # Phase residency and diffusers' offloading start from the CPU; the hooks move things in.
    load_device = device if spec.placement == "resident" else torch.device("cpu")

    free_memory(device)
    start = time.perf_counter()
    with measure_peak(device) as load_peak, _quiet_loading():
        components: dict[str, Any] = {}
        if spec.unet == "q4k":
            components["unet"] = _load_q4k_unet(quant_dir, base_dir, config_name, load_device, dtype)
        if spec.text_encoder == "int8":
            components["text_encoder"] = _load_int8_text_encoder(
                quant_dir, torch.device("cpu") if te_on_cpu else load_device,
                cpu_dtype_resolved if te_on_cpu else dtype,  # on the CPU, the CPU's dtype (fp16 matmuls are slow there)
            )
        if spec.vae == "cpu":
            from diffusers import AutoencoderKL

            components["vae"] = AutoencoderKL.from_pretrained(base_dir, subfolder="vae", dtype=vae_dtype, local_files_only=True)
        elif spec.vae == "tiny":
            components["vae"] = lean.build_tiny_vae(tiny_vae, seed=seed, dtype=dtype)
        pipe = _load_sd_pipeline(base_dir, dtype, **components)
        if spec.unet == "fp16" and lora_dir is not None:
            _fuse_lora(pipe, Path(lora_dir))
        # Move only what from_pretrained loaded on the CPU; the GGUF UNet and the 8-bit text encoder
        # are already placed, and the CPU VAE stays where it is.
        for name in ("unet", "text_encoder", "vae"):
            if name not in components or (name == "vae" and spec.vae == "tiny"):
                getattr(pipe, name).to(load_device)
        if spec.vae == "tiled":
            lean.enable_tiled_decode(pipe.vae, vae_tile_px)
        if spec.attention != "sdpa":
            lean.set_attention(pipe, spec.attention)
        # The graph wraps the innermost UNet step: before serial CFG splits calls and before the
        # placement hooks move weights (see sd.cuda_graph).
        graph = enable_cuda_graph(pipe.unet, on_error="eager") if spec.cuda_graph and device.type == "cuda" else None
        if spec.cfg == "serial":
            lean.enable_serial_cfg(pipe.unet)
        resident = component_bytes(pipe)  # before any hook moves a weight
        bundle = PipelineBundle(name=config_name, pipe=pipe, device=device, dtype=dtype, vae_device=vae_device,
                                vae_dtype=vae_dtype, spec=spec, resident=resident, cuda_graph=graph)
        if spec.cuda_graph and graph is None:
            bundle.notes.append("CPU run: no CUDA graph to capture; the UNet runs eagerly")
        _place(bundle, te_on_cpu)
        if graph is not None and bundle.residency is not None:
            bundle.residency.on_leave("unet", graph.release)  # the decode phase needs no UNet activations
        pipe.set_progress_bar_config(disable=True)
    bundle.load_seconds = time.perf_counter() - start
    bundle.load_peak = load_peak
    return bundle


def _load_q4k_unet(quant_dir: Any, base_dir: Path, config_name: str, device: torch.device, dtype: torch.dtype) -> Any:
    from squeezegen.quant.gguf.unet_loader import load_gguf_unet

    if quant_dir is None:
        raise UserError(f"configuration {config_name} needs quant_dir (the quantize stage's output folder)")
    quant_dir = _check_dir(Path(quant_dir), "quantized model folder", "run `dvc repro quantize` first")
    gguf = _check_dir(quant_dir / GGUF_NAME, "GGUF UNet", "run `dvc repro quantize` first")
    return load_gguf_unet(gguf, config=base_dir, device=device, compute_dtype=dtype)


def _load_int8_text_encoder(quant_dir: Any, device: torch.device, dtype: torch.dtype) -> Any:
    from squeezegen.quant.int8 import load_text_encoder_int8

    te_dir = check_model_files(Path(quant_dir) / TEXT_ENCODER_DIR, what="8-bit text encoder", stage="quantize",
                               required=("config.json", "model.safetensors"))
    return _cast_unquantized(load_text_encoder_int8(te_dir, device=str(device), dtype=torch.float16), dtype)


def _place(bundle: PipelineBundle, te_on_cpu: bool) -> None:
    """Attach the configuration's placement: phase residency, or diffusers' own offloading."""
    placement, pipe, device = bundle.spec.placement, bundle.pipe, bundle.device
    if placement == "phase":
        from squeezegen.sd.residency import enable_phase_residency

        bundle.residency = enable_phase_residency(pipe, device, run_on_cpu=("text_encoder",) if te_on_cpu else ())
        if device.type == "cpu":
            bundle.notes.append("CPU run: the schedule is recorded, nothing moves (compute device = CPU)")
    elif placement == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif placement == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    if placement in OFFLOAD_PLACEMENTS and device.type == "cpu":
        bundle.notes.append("CPU run: diffusers' offload with the CPU as its execution device moves nothing")


def _encode(bundle: PipelineBundle, prompt: str, guidance: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    cond, uncond = bundle.pipe.encode_prompt(
        prompt, bundle.device, num_images_per_prompt=1, do_classifier_free_guidance=guidance > 1.0
    )
    cast = lambda t: None if t is None else t.to(bundle.device, bundle.dtype)  # noqa: E731
    return cast(cond), cast(uncond)  # (1, 77, 768) each for SD 1.5


def _decode(bundle: PipelineBundle, latents: torch.Tensor) -> Image.Image:
    vae = bundle.pipe.vae
    latents = latents.to(bundle.vae_device, bundle.vae_dtype) / vae.config.scaling_factor  # (1, 4, h/8, w/8)
    image = vae.decode(latents, return_dict=False)[0]  # (1, 3, h, w) in [-1, 1]
    return bundle.pipe.image_processor.postprocess(image.float(), output_type="pil")[0]


@torch.inference_mode()
def generate_measured(
    bundle: PipelineBundle,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    size: int,
    guidance: float = 7.5,
) -> Generation:
    """One image per (prompt, seed) pair, batch size 1, with the peak memory of each phase.

    Phases: `encode` (text encoder), `denoise` (UNet loop, latents out), `decode` (VAE on
    `bundle.vae_device`). Each phase's peak is the worst over all images; `seconds` holds the
    wall time of each image (synchronized on CUDA).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    images, seconds = [], []
    phase_peaks: dict[str, PeakMemory] = {}

    def keep_worst(name: str, peak: PeakMemory) -> None:
        if name not in phase_peaks or peak.peak_bytes > phase_peaks[name].peak_bytes:
            phase_peaks[name] = peak

    for prompt, seed in zip(prompts, seeds):
        start = time.perf_counter()
        with measure_peak(bundle.device) as peak:
            cond, uncond = _encode(bundle, prompt, guidance)
        keep_worst("encode", peak)
        with measure_peak(bundle.device) as peak:
            latents = bundle.pipe(
                prompt_embeds=cond,
                negative_prompt_embeds=uncond,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(int(seed)),
                output_type="latent",
                return_dict=False,
            )[0]  # (1, 4, size/8, size/8)
            del cond, uncond
        keep_worst("denoise", peak)
        with measure_peak(bundle.device) as peak:  # on CUDA, a CPU VAE's decode shows in peak_rss
            images.append(_decode(bundle, latents))
            del latents
        keep_worst("decode", peak)
        if bundle.device.type == "cuda":
            torch.cuda.synchronize(bundle.device)
        seconds.append(time.perf_counter() - start)
    return Generation(images=images, seconds=seconds, phase_peaks=phase_peaks)


def generate_compressed(
    prompt: str,
    *,
    base_dir: str | os.PathLike,
    quant_dir: str | os.PathLike,
    seed: int = 0,
    steps: int = 25,
    size: int = 512,
    guidance_scale: float = 7.5,
    compute_dtype: str | torch.dtype = "float16",
    cpu_dtype: CpuDtype = "fp32",
    config_name: str = "q4k_unet_int8_clip_cpu_vae",
    device: str | torch.device | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """One image from the compressed pipeline (default: Q4_K UNet + 8-bit CLIP + CPU VAE).

    Returns (image, peaks): peaks has `peak_allocated` / `peak_reserved` (CUDA) and `peak_rss`
    (bytes) over the generation, `weights_bytes` resident, the device, and per-phase details.
    """
    bundle = build_pipeline(
        config_name, base_dir=base_dir, quant_dir=quant_dir, device=device, compute_dtype=compute_dtype,
        cpu_dtype=cpu_dtype,
    )
    result = generate_measured(bundle, [prompt], [seed], steps=steps, size=size, guidance=guidance_scale)
    peaks = result.peak()
    peaks["weights_bytes"] = bundle.resident_bytes()["total"]["bytes"]
    return result.images[0], peaks


# ---------------------------------------------------------------------------- making the files


def fused_unet_state_dict(base_dir: str | os.PathLike, lora_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The base UNet's state dict in fp32 on the CPU, with the LoRA (if any) fused into the weights.

    Loads the whole pipeline because diffusers' `load_lora_weights` lives on the pipeline; after
    `fuse_lora` + `unload_lora_weights` the keys are the plain UNet's again (what the GGUF holds).
    """
    pipe = load_fused_pipeline(base_dir, lora_dir)
    state = {k: v.detach().contiguous() for k, v in pipe.unet.state_dict().items()}
    del pipe
    return state


def load_fused_pipeline(base_dir: str | os.PathLike, lora_dir: str | os.PathLike | None = None) -> Any:
    """The base pipeline in fp32 on the CPU with the LoRA (if any) merged into the UNet weights."""
    check_pipeline_folder(base_dir)
    if lora_dir is not None:
        check_lora_folder(lora_dir)
    with _quiet_loading():
        pipe = _load_sd_pipeline(Path(base_dir), torch.float32)
        if lora_dir is not None:
            _fuse_lora(pipe, Path(lora_dir))
    return pipe
