"""Weight quantization: the Q4_K codec, GGUF read/write with its tensor policy, int8, and the
modules that dequantize packed weights on the fly."""
