"""LoRA files: lazy safetensors reading, naming families, modules, metadata, hashes, atomic writes."""
