"""The one line an error is reported in."""

from __future__ import annotations


def message_line(err: BaseException | str) -> str:
    """The informative line of an error message: its first line, or its last when the
    message is a traceback (as some TVM errors are); empty when the message is."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]
