"""The quantized GGUF types (Q2_K … Q6_K, Q8_0): one registry (`registry.codec`), the byte
layouts, the least-squares fits, Q4_K's own quantizer and its fused Triton decode."""
