"""One parameter codec: a value from text by its declared type, and bounds as metadata.

autopilotctl (`--option value`), the web UI's form fields and config (environment variables)
all turn text into values here, so "1_000" or "yes" mean the same everywhere. A command
declares bounds on a parameter with `Annotated[int, Bounds(1, 500)]`; the registry checks
them for every caller and lists them in `system.commands`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

TRUE = frozenset({"true", "yes", "on", "1"})
FALSE = frozenset({"false", "no", "off", "0"})
KIND_WORDS = {
    "integer": "a whole number",
    "number": "a number",
    "boolean": "yes or no",
    "object": "a JSON object",
    "string": "text",
    "array": "a list",
}


class CodecError(ValueError):
    """The text is not a value of the wanted kind; the message says what was wanted."""


@dataclass(frozen=True)
class Bounds:
    """Inclusive limits of a number, or the most characters of a text."""

    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None

    def violation(self, value: Any) -> str | None:
        """Why `value` is out of bounds (in words), or None."""
        if isinstance(value, str) and self.max_length is not None and len(value) > self.max_length:
            return f"must be at most {self.max_length} characters"
        if isinstance(value, int | float) and not isinstance(value, bool):
            low, high = self.minimum, self.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                if low is not None and high is not None:
                    return f"must be between {_num(low)} and {_num(high)}"
                if low is not None:
                    return f"must be at least {_num(low)}"
                assert high is not None
                return f"must be at most {_num(high)}"
        return None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        return out


def _num(value: float) -> str:
    return f"{value:g}"


def from_text(kind: str, raw: str) -> Any:
    """`raw` as a value of `kind` (integer, number, boolean, object, string, array item).

    Integers may use `_` or `,` between digit groups. Raises CodecError in words.
    """
    text = raw.strip()
    try:
        if kind == "integer":
            return int(text.replace("_", "").replace(",", ""))
        if kind == "number":
            return float(text.replace("_", ""))
        if kind == "boolean":
            if text.lower() in TRUE:
                return True
            if text.lower() in FALSE:
                return False
            raise ValueError(text)
        if kind == "object":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError(text)
            return value
    except ValueError:
        raise CodecError(f"must be {KIND_WORDS.get(kind, kind)}, not '{raw}'") from None
    return raw
