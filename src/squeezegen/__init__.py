"""squeezegen: make image generation fit in very little memory, reproducibly."""

from squeezegen.logfilters import silence_4bit_kernel_warning

__version__ = "0.1.0"

silence_4bit_kernel_warning()  # before any stage imports bitsandbytes (directly or via peft)
