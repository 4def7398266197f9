"""Q4_K decode for CPU tensors as a small compiled C kernel (`q4k_cpu.c`), loaded with ctypes.

Every forward of a GGUF UNet decodes all its packed weights; torch's elementwise decode runs a
chain of kernels with float32 temporaries (~0.5–2 G weights/s on 2 cores), which on a CPU cost
as much as the matmuls it feeds. The C kernel reads each super-block once and writes the compute
dtype directly (~8–10 G weights/s on one core of this machine: benchmarks/kquant_decode_cpu.py).

The kernel is built on first use with the system's C compiler (`$CC`, else `cc`; ~0.2 s) into
the user's cache (`$SQUEEZEGEN_CACHE`, else `$XDG_CACHE_HOME/squeezegen`, else
`~/.cache/squeezegen`), keyed by the source, the flags, the compiler and the CPU's feature flags,
so a cache shared by machines of different CPUs never loads a library built for another ISA.
Without a compiler (or if the build fails) `available()` is False, one warning says why, and the
layers use the torch decode: same bits, slower.

The result equals `q4k.dequantize_q4_k` bit for bit before the cast (see the C file's note), so
which decode ran never changes an output.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from squeezegen.quant.codecs.q4k import BLOCK_BYTES, QK_K

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("q4k_cpu.c")
FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC")
NATIVE_FLAGS = ("-march=native",)  # dropped when the compiler rejects it (the kernel is exact either way)
PARALLEL_MIN_BLOCKS = 4096  # tensors of at least this many super-blocks (1 Mi weights) are split across threads
DTYPES = {torch.float32: "q4k_decode_f32", torch.bfloat16: "q4k_decode_bf16"}


def cache_dir() -> Path:
    """Where built kernels live: $SQUEEZEGEN_CACHE, else $XDG_CACHE_HOME/squeezegen, else ~/.cache/squeezegen."""
    if explicit := os.environ.get("SQUEEZEGEN_CACHE"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "squeezegen"


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), part of the cache key: -march=native builds for this ISA."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Build the kernel into `target` atomically; the compiler's error text on failure, else None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
        if done.returncode:
            return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        os.replace(tmp, target)
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The built kernel (building it on first use), or None with one warning when it cannot be built."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        log.warning("no C compiler (cc or $CC): Q4_K weights decode with torch on the CPU, several times slower")
        return None
    source = SOURCE.read_bytes()
    error = None
    for flags in (FLAGS + NATIVE_FLAGS, FLAGS):
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), compiler.encode(),
                                         _cpu_flags().encode(), platform.machine().encode()])).hexdigest()[:16]
        target = cache_dir() / "kernels" / f"q4k_cpu-{key}.so"
        try:
            if not target.exists():
                error = _compile(compiler, flags, target)
                if error:
                    continue
            lib = ctypes.CDLL(str(target))
        except OSError as exc:
            error = str(exc)
            continue
        for name in DTYPES.values():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
        return lib
    log.warning("could not build the Q4_K CPU kernel (%s): Q4_K weights decode with torch, several times slower", error)
    return None


def available() -> bool:
    """True when the kernel is built (or can be) on this machine."""
    return library() is not None


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="q4k-decode")


def dequantize_q4_k_native(packed: torch.Tensor, dtype: torch.dtype | None = None, *,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode Q4_K bytes (uint8 [..., 144·n], CPU) to [..., 256·n] in float32 or bfloat16.

    `out` (contiguous, `dtype`, as many elements) receives the weights instead of a new tensor.
    Large tensors are split across torch's intra-op thread count (ctypes releases the GIL while
    the C code runs). Raises RuntimeError when the kernel is unavailable or the dtype is not one
    it writes; callers check `available()` and `supports(dtype)` first.
    """
    dtype = dtype or torch.float32
    lib = library()
    if lib is None or dtype not in DTYPES:
        raise RuntimeError(f"the Q4_K CPU kernel cannot decode to {dtype} here; use the torch decode")
    if packed.device.type != "cpu" or packed.dtype != torch.uint8:
        raise RuntimeError("the Q4_K CPU kernel decodes uint8 CPU tensors only")
    blocks = packed.reshape(-1, BLOCK_BYTES).contiguous()  # (B, 144)
    n_blocks = blocks.shape[0]
    if out is None:
        out = torch.empty((n_blocks, QK_K), dtype=dtype)
    elif out.dtype != dtype or not out.is_contiguous() or out.numel() != n_blocks * QK_K or out.device.type != "cpu":
        raise RuntimeError(f"out must be a contiguous CPU {dtype} tensor of {n_blocks * QK_K} elements")
    out = out.view(n_blocks, QK_K)
    decode = getattr(lib, DTYPES[dtype])
    workers = min(torch.get_num_threads(), max(1, n_blocks // (PARALLEL_MIN_BLOCKS // 2)))
    if n_blocks < PARALLEL_MIN_BLOCKS or workers == 1:
        decode(blocks.data_ptr(), out.data_ptr(), n_blocks)
    else:
        step = -(-n_blocks // workers)
        jobs = [_pool(workers).submit(decode, blocks[i].data_ptr(), out[i].data_ptr(), min(step, n_blocks - i))
                for i in range(0, n_blocks, step)]
        for job in jobs:
            job.result()
    return out.reshape(*packed.shape[:-1], packed.shape[-1] // BLOCK_BYTES * QK_K)


def supports(dtype: torch.dtype) -> bool:
    """Whether the kernel writes `dtype` (float32 and bfloat16; a CPU has no fast float16 matmul)."""
    return dtype in DTYPES
