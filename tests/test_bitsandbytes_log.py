"""Importing squeezegen hides its 4-bit CPU kernel warning, and only that."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("bitsandbytes")

KERNEL_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _python(code: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # bitsandbytes may try the hub for that kernel: never wait on it
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_importing_squeezegen_hides_the_kernel_warning_but_not_other_warnings():
    output = _python(
        "import logging\n"
        "import squeezegen\n"
        "import bitsandbytes, peft\n"  # the real imports (peft imports bitsandbytes too)
        "log = logging.getLogger('bitsandbytes.backends.cpu.ops')\n"
        f"log.warning('{KERNEL_WARNING}: simulated')\n"  # the same message on CPUs where the import does not try
        "log.warning('a real bitsandbytes problem')\n"
    )
    assert KERNEL_WARNING not in output
    assert "a real bitsandbytes problem" in output


def test_without_squeezegen_the_import_warns_on_such_a_cpu():
    """The control: on a CPU where bitsandbytes tries the hub kernel, a bare import does print it."""
    output = _python(
        "import bitsandbytes\n"
        "from bitsandbytes.functional import has_avx512bf16\n"
        "print('bf16 kernel path:', bool(has_avx512bf16()))\n"
    )
    if "bf16 kernel path: True" not in output:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not try the 4-bit kernel here")
    try:
        import kernels  # noqa: F401
    except ImportError:
        assert KERNEL_WARNING in output
    else:
        pytest.skip("the `kernels` package is installed: the kernel may load and nothing is printed")
