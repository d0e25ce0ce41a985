"""API keys with roles, read from a file and compared in constant time."""

from __future__ import annotations

import hmac
import logging
import os
import stat
from pathlib import Path

from perennial.exceptions import InvalidParameterError

__all__ = ["ROLES", "KeyRing"]

#: ``read``: predict and list; ``write``: also learn, unlearn, forget, restore and review.
ROLES = ("read", "write")

logger = logging.getLogger("perennial.service")


class KeyRing:
    """The API keys a service accepts, each with a role.

    Parameters
    ----------
    keys
        Pairs of (key, role).

    Examples
    --------
    >>> ring = KeyRing([("s3cret-reader-key", "read"), ("s3cret-writer-key", "write")])
    >>> ring.role_of("s3cret-writer-key"), ring.role_of("guess"), ring.allows("read", "write")
    ('write', None, False)
    """

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        for key, role in keys:
            if role not in ROLES:
                raise InvalidParameterError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
            if not key:
                raise InvalidParameterError("an API key must not be empty")
        self.keys = [(key.encode("utf-8"), role) for key, role in keys]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Read ``KEY ROLE`` lines; blank lines and lines starting with ``#`` are skipped."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidParameterError(f"cannot read the keys file {file}: {error}") from error
        keys: list[tuple[str, str]] = []
        seen: set[str] = set()
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ROLES:
                raise InvalidParameterError(
                    f"{file}, line {number}: expected 'KEY ROLE' with ROLE one of "
                    f"{', '.join(ROLES)}, got {len(parts)} fields"
                    + (f" and role {parts[1]!r}" if len(parts) == 2 else "")
                )
            if parts[0] in seen:
                raise InvalidParameterError(f"{file}, line {number}: this key is listed twice")
            seen.add(parts[0])
            keys.append((parts[0], parts[1]))
        if not keys:
            raise InvalidParameterError(f"the keys file {file} lists no key")
        try:
            if file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                logger.warning("keys file %s is readable by other users; chmod 600 it", file)
        except OSError:  # pragma: no cover - the file was just read
            pass
        return cls(keys)

    def role_of(self, key: str) -> str | None:
        """The role of ``key``, or None; compares against every key in constant time."""
        candidate = key.encode("utf-8")
        found: str | None = None
        for known, role in self.keys:
            if hmac.compare_digest(candidate, known):  # no early exit: timing says nothing
                found = role
        return found

    @staticmethod
    def allows(role: str, needed: str) -> bool:
        """Whether a key of ``role`` may do what needs ``needed`` (write implies read)."""
        return role == needed or (role == "write" and needed == "read")

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"KeyRing({len(self.keys)} keys)"  # never the keys themselves
