"""Model loading: dtype, attention implementation, RoPE scaling, 4-bit quantization, adapters."""
