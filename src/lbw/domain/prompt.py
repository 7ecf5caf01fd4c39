"""The LoRA prompt tag that applies a block-weight preset in LBW.

Current syntax (web UI >= 1.5): ``<lora:NAME:TE:lbw=PRESET>``. The old positional form
``<lora:NAME:1:PRESET>`` (the founding tutorial's) puts the preset where A1111 expects the UNet multiplier and
fails there with "could not convert string to float", so it is only produced on request, with
``LEGACY_WARNING``.

Example:
    >>> lora_tag("gobuhime-Defmix2", "Sub")
    '<lora:gobuhime-Defmix2:1:lbw=Sub>'
    >>> lora_tag("gobuhime-Defmix2", "Sub", legacy=True)
    '<lora:gobuhime-Defmix2:1:Sub>'
"""

from __future__ import annotations

from lbw.domain.numbers import format_number
from lbw.domain.weights import validate_name
from lbw.errors import WeightsError

LEGACY_WARNING = (
    'the positional form <lora:NAME:1:PRESET> fails on web UI >= 1.5 ("could not convert string to float"); '
    "use lbw=PRESET there"
)


def lora_tag(lora_name: str, preset: str, *, multiplier: float = 1.0, legacy: bool = False) -> str:
    """The prompt tag for ``lora_name`` at ``multiplier`` with block weights ``preset``.

    Example:
        >>> lora_tag("face", "XYZ", multiplier=0.8)
        '<lora:face:0.8:lbw=XYZ>'
    """
    name = lora_name.strip()
    if not name or any(c in name for c in ":<>\n\r"):
        raise WeightsError(f"LoRA name {lora_name!r} is empty or contains ':', '<' or '>'")
    preset_name = validate_name(preset, what="preset name")
    strength = format_number(multiplier)
    if legacy:
        return f"<lora:{name}:{strength}:{preset_name}>"
    return f"<lora:{name}:{strength}:lbw={preset_name}>"
