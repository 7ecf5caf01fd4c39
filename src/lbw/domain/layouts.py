"""Block layouts: the one place that knows the block IDs and their order.

LBW (the web UI extension) accepts vectors of 12, 17, 20, 26 or 61 values; the length names the layout.
26 is the canonical SD form, 20 the canonical SDXL form, 61 is Flux.

Example:
    >>> SD17.ids[:3]
    ('BASE', 'IN01', 'IN02')
    >>> layout_for_length(12).name
    'XL12'
"""

from __future__ import annotations

from dataclasses import dataclass

from lbw.errors import WeightsError


@dataclass(frozen=True)
class Layout:
    """A named, ordered tuple of block IDs."""

    name: str
    ids: tuple[str, ...]
    description: str

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, block_id: str) -> int:
        """Position of ``block_id`` in this layout; raises WeightsError naming the valid IDs."""
        try:
            return self.ids.index(block_id)
        except ValueError:
            raise WeightsError(
                f"block {block_id!r} is not in layout {self.name} ({self.ids[0]}..{self.ids[-1]})"
            ) from None

    def __contains__(self, block_id: object) -> bool:
        return block_id in self.ids


def _seq(prefix: str, start: int, stop: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:02d}" for i in range(start, stop))


SD26 = Layout(
    "SD26",
    ("BASE", *_seq("IN", 0, 12), "M00", *_seq("OUT", 0, 12)),
    "SD1.x/SD2.x LyCORIS, LoCon, LoHa or full (all 26 blocks)",
)
SD17 = Layout(
    "SD17",
    ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *_seq("OUT", 3, 12)),
    "SD1.x/SD2.x standard LoRA (blocks with attention)",
)
XL20 = Layout(
    "XL20",
    ("BASE", *_seq("IN", 0, 9), "M00", *_seq("OUT", 0, 9)),
    "SDXL LyCORIS or full (all 20 blocks)",
)
XL12 = Layout(
    "XL12",
    ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", *_seq("OUT", 0, 6)),
    "SDXL standard LoRA (blocks with attention)",
)
FLUX61 = Layout(
    "FLUX61",
    ("CLIP", "T5", "IN", *_seq("D", 0, 19), *_seq("S", 0, 38), "OUT"),
    "FLUX.1 (19 double blocks, 38 single blocks)",
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (SD17, SD26, XL12, XL20, FLUX61)}
LAYOUTS_BY_LENGTH: dict[int, Layout] = {len(layout): layout for layout in LAYOUTS.values()}
VALID_LENGTHS: tuple[int, ...] = tuple(sorted(LAYOUTS_BY_LENGTH))

# The short form of each full layout, and back (LBW fills missing slots with 0).
SHORT_OF_FULL: dict[str, Layout] = {"SD26": SD17, "XL20": XL12}
FULL_OF_SHORT: dict[str, Layout] = {"SD17": SD26, "XL12": XL20}

# The sheet labels the middle block MID; LBW says M00. Accepted as input, never written.
BLOCK_ID_ALIASES: dict[str, str] = {"MID": "M00"}


def layout_for_length(n: int) -> Layout:
    """The layout a vector of ``n`` values uses; raises WeightsError listing the valid counts."""
    try:
        return LAYOUTS_BY_LENGTH[n]
    except KeyError:
        valid = ", ".join(map(str, VALID_LENGTHS[:-1])) + f" or {VALID_LENGTHS[-1]}"
        raise WeightsError(f"found {n} values; a weight vector has {valid} values") from None


def layout_named(name: str) -> Layout:
    """Look a layout up by name (``SD26``), by length (``26``) or case-insensitively."""
    key = name.strip().upper()
    if key.isdigit() and int(key) in LAYOUTS_BY_LENGTH:
        return LAYOUTS_BY_LENGTH[int(key)]
    for layout in LAYOUTS.values():
        if layout.name == key:
            return layout
    valid = ", ".join(f"{n} ({len(lay)})" for n, lay in LAYOUTS.items())
    raise WeightsError(f"unknown layout {name!r}; expected one of {valid}")


def canonical_block_id(block_id: str) -> str:
    """Upper-case a block ID and resolve the sheet's ``MID`` alias."""
    key = block_id.strip().upper()
    return BLOCK_ID_ALIASES.get(key, key)
