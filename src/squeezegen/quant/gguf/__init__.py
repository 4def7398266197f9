"""GGUF files: write and read a UNet under the tensor policy, check a file strictly before
reading it, LDM tensor names, the dequantizing layers and UNet loader, and one-file exports."""
