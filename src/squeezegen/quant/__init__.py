"""Weight quantization: GGUF K-quant codecs, GGUF files and the layers that run them, mixed types
under a byte budget, the 8-bit text encoder, and `pipeline.quantize_pipeline` that ties them up."""
