"""Block layouts, weight vectors, presets, the sheet and training arguments (standard library only)."""
