"""squeezegen: make image generation fit in very little memory, reproducibly."""

__version__ = "0.1.0"
