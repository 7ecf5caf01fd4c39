"""lbw: the LoRA Block Weight toolkit.

Layers (imports point downward only): ``interfaces`` -> ``services`` -> ``render`` -> ``files`` ->
``adapters`` -> ``domain``. ``domain`` uses the standard library only, so importing it is instant.
"""

__version__ = "0.1.0"
