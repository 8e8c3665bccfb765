"""Maps of named text fields (user and group profiles), pure: checked and
merged one way, with a clear error and no change when a change is refused."""

from __future__ import annotations

from collections.abc import Mapping

from timpy.errors import Code, RequestError

MAX_KEY = 64


def check_changes(changes: Mapping[str, str], max_value: int, what: str) -> None:
    if not isinstance(changes, Mapping) or not changes:
        raise RequestError(f"a {what} change names at least one field", Code.BAD_REQUEST)
    for key, value in changes.items():
        if not isinstance(key, str) or not isinstance(value, str) or not 0 < len(key) <= MAX_KEY:
            raise RequestError(f"{what} fields are named by 1 to {MAX_KEY} characters", Code.BAD_REQUEST)
        if len(value) > max_value:
            raise RequestError(f"{what} field {key!r} is longer than {max_value} characters", Code.BAD_REQUEST)


def merge(current: Mapping[str, str], changes: Mapping[str, str], max_fields: int, what: str) -> dict[str, str]:
    """``current`` after ``changes`` ("" removes a field); raises past ``max_fields``."""
    out = dict(current)
    for key, value in changes.items():
        if value:
            out[key] = value
        else:
            out.pop(key, None)
    if len(out) > max_fields:
        raise RequestError(f"a {what} has at most {max_fields} fields", Code.BAD_REQUEST)
    return out
