"""argon2id password hashing (argon2-cffi)."""

from __future__ import annotations

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Argon2PasswordHasher:
    """argon2id at (at least) OWASP's minimum: 19 MiB of memory, 2 iterations."""

    def __init__(self, *, time_cost: int = 2, memory_cost_kib: int = 19 * 1024) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost_kib,
            parallelism=1,
            type=argon2.Type.ID,
        )
        self._dummy = self._hasher.hash("not a real password, for timing only")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def dummy_verify(self, password: str) -> None:
        self.verify(self._dummy, password)
