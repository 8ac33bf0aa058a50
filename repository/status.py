"""Status-bit masks: one notation for config, CLI and workflows.

A mask is written like a binary number, rightmost character is bit 0, `x`
means "leave/ignore this bit": `"x1x0"` sets (or matches) bit 2 and clears
(or requires clear) bit 0. Underscores and spaces may group digits.
"""

from __future__ import annotations

from typing import NamedTuple

BITS = 32
ALL = (1 << BITS) - 1


class StatusMask(NamedTuple):
    """`mask` has a 1 for every bit the text names; `value` holds those bits' wanted values."""

    mask: int
    value: int

    def matches(self, status: int) -> bool:
        return (status & self.mask) == self.value

    def apply(self, status: int) -> int:
        """The status with the named bits forced to their values, others kept."""
        return (status & ~self.mask & ALL) | self.value

    def sql(self, column: str = "status") -> tuple[str, tuple[int, int]]:
        """A WHERE fragment matching this mask, with its parameters."""
        return f"(({column} & ?) = ?)", (self.mask, self.value)

    def __str__(self) -> str:
        return format_mask(self)

    @property
    def empty(self) -> bool:
        return self.mask == 0


NO_MASK = StatusMask(0, 0)


def parse_mask(text: str, where: str = "status mask") -> StatusMask:
    """Parse `"x1x0"`; raise ValueError naming `where`, the text and the bad character."""
    if isinstance(text, StatusMask):
        return text
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a mask like \"x1x0\", got {text!r}")
    digits = text.replace("_", "").replace(" ", "")
    if digits == "":
        return NO_MASK
    if len(digits) > BITS:
        raise ValueError(f"{where}: {text!r} has {len(digits)} bits, at most {BITS} are allowed")
    mask = value = 0
    for i, ch in enumerate(reversed(digits)):
        if ch == "1":
            mask |= 1 << i
            value |= 1 << i
        elif ch == "0":
            mask |= 1 << i
        elif ch not in "xX":
            raise ValueError(f"{where}: bad character {ch!r} in {text!r} (use 0, 1 or x; rightmost is bit 0)")
    return StatusMask(mask, value)


def format_mask(mask: StatusMask) -> str:
    """The shortest text for a mask: `StatusMask(0b101, 0b100)` -> `"1x0"`."""
    if mask.mask == 0:
        return ""
    top = mask.mask.bit_length()
    return "".join(
        ("1" if mask.value >> i & 1 else "0") if mask.mask >> i & 1 else "x" for i in range(top - 1, -1, -1)
    )


def format_status(status: int, width: int = BITS) -> str:
    """All bits of a record's status, bit 0 rightmost."""
    return format(status & ALL, f"0{width}b")


def set_bits(status: int) -> list[int]:
    """The numbers of the bits set in `status`."""
    return [i for i in range(BITS) if status >> i & 1]
