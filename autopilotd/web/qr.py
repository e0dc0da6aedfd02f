"""QR codes as SVG path data, so a template draws them inline without any raw HTML."""

from __future__ import annotations

from dataclasses import dataclass

import segno

BORDER = 4


@dataclass(frozen=True)
class QrPath:
    size: int  # modules per side, border included
    path: str  # SVG path data: only M, h, v, z and digits

    def to_json(self) -> dict[str, object]:
        return {"size": self.size, "path": self.path}


def qr_path(text: str) -> QrPath:
    """Encode `text` (upper-cased when it is a BOLT11, for the denser alphanumeric mode)."""
    data = text.upper() if text.lower().startswith(("ln", "lightning:")) else text
    code = segno.make(data, error="m", micro=False)
    parts: list[str] = []
    size = 0
    for y, modules in enumerate(code.matrix_iter(scale=1, border=BORDER)):
        row = [bool(m) for m in modules]
        size = len(row)
        x = 0
        while x < size:
            if row[x]:
                start = x
                while x < size and row[x]:
                    x += 1
                parts.append(f"M{start} {y}h{x - start}v1h-{x - start}z")
            else:
                x += 1
    return QrPath(size, "".join(parts))
