"""bcrypt htpasswd entries for the registry's Basic-auth mode, in pure Python: `bcrypt` is not a dependency.

docker-registry's htpasswd backend accepts only bcrypt hashes. Blowfish's initial state is the hex expansion
of pi, so it is computed here rather than pasted as 1042 constants. Cost 4 (the minimum) keeps hashing quick.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from functools import cache

_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_STD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TO_BCRYPT = str.maketrans(_STD_ALPHABET, _BCRYPT_ALPHABET)
_FROM_BCRYPT = str.maketrans(_BCRYPT_ALPHABET, _STD_ALPHABET)
_MASK = 0xFFFFFFFF
_P_WORDS = 18
_S_WORDS = 4 * 256


def _arctan_inverse(x: int, one: int) -> int:
    """arctan(1/x) scaled by `one`, by its Taylor series in integers."""
    total = term = one // x
    x_squared = x * x
    n = 1
    sign = -1
    while term:
        term //= x_squared
        n += 2
        total += sign * (term // n)
        sign = -sign
    return total


@cache
def _pi_words() -> tuple[int, ...]:
    """The first 1042 32-bit words of pi's fractional part: Blowfish's P-array then its four S-boxes."""
    bits = 32 * (_P_WORDS + _S_WORDS)
    guard = 64
    one = 1 << (bits + guard)
    pi = 4 * (4 * _arctan_inverse(5, one) - _arctan_inverse(239, one))  # Machin's formula
    fraction = (pi - 3 * one) >> guard
    return tuple((fraction >> (bits - 32 * (i + 1))) & _MASK for i in range(_P_WORDS + _S_WORDS))


class _Blowfish:
    def __init__(self) -> None:
        words = _pi_words()
        self.p = list(words[:_P_WORDS])
        self.s = [list(words[_P_WORDS + 256 * i : _P_WORDS + 256 * (i + 1)]) for i in range(4)]

    def encrypt(self, left: int, right: int) -> tuple[int, int]:
        p = self.p
        s0, s1, s2, s3 = self.s
        for i in range(16):
            left ^= p[i]
            mixed = ((s0[left >> 24] + s1[(left >> 16) & 0xFF]) & _MASK) ^ s2[(left >> 8) & 0xFF]
            right ^= (mixed + s3[left & 0xFF]) & _MASK
            left, right = right, left
        left, right = right, left
        return left ^ p[17], right ^ p[16]

    def expand(self, key: bytes, salt: bytes | None) -> None:
        """bcrypt's Blowfish key schedule: key stream into P, then re-encrypt with a salt stream."""
        key_words = _cycle_words(key)
        for i in range(_P_WORDS):
            self.p[i] ^= next(key_words)
        salt_words = _cycle_words(salt) if salt is not None else None
        left = right = 0
        targets: list[list[int]] = [self.p, *self.s]
        for table in targets:
            for i in range(0, len(table), 2):
                if salt_words is not None:
                    left ^= next(salt_words)
                    right ^= next(salt_words)
                left, right = self.encrypt(left, right)
                table[i], table[i + 1] = left, right


def _cycle_words(data: bytes) -> Iterator[int]:
    position = 0
    while True:
        word = 0
        for _ in range(4):
            word = (word << 8) | data[position]
            position = (position + 1) % len(data)
        yield word


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=").translate(_TO_BCRYPT)


def _decode(text: str) -> bytes:
    standard = text.translate(_FROM_BCRYPT)
    return base64.b64decode(standard + "=" * (-len(standard) % 4))


def bcrypt_hash(password: str, *, cost: int = 4, salt: str | None = None) -> str:
    """A `$2y$` bcrypt hash of `password`; `salt` is 22 bcrypt-base64 characters (random when omitted)."""
    if not 4 <= cost <= 31:
        raise ValueError("bcrypt cost must be between 4 and 31")
    salt_text = salt if salt is not None else _encode(os.urandom(16))
    if len(salt_text) != 22:
        raise ValueError("bcrypt salt must be 22 characters")
    salt_bytes = _decode(salt_text)[:16]
    key = (password.encode("utf-8") + b"\x00")[:72]
    state = _Blowfish()
    state.expand(key, salt_bytes)
    for _ in range(1 << cost):
        state.expand(key, None)
        state.expand(salt_bytes, None)
    magic = b"OrpheanBeholderScryDoubt"
    blocks = [int.from_bytes(magic[i : i + 4], "big") for i in range(0, len(magic), 4)]
    for _ in range(64):
        for i in range(0, len(blocks), 2):
            blocks[i], blocks[i + 1] = state.encrypt(blocks[i], blocks[i + 1])
    digest = b"".join(word.to_bytes(4, "big") for word in blocks)[:23]
    # Re-encoding the decoded salt canonicalises its unused low bits, as every bcrypt implementation does.
    return f"$2y${cost:02d}${_encode(salt_bytes)}{_encode(digest)}"


def htpasswd_line(username: str, password: str) -> str:
    """One `user:hash` line of an htpasswd file as docker-registry reads it."""
    if ":" in username or "\n" in username:
        raise ValueError("an htpasswd user name cannot contain ':' or a newline")
    return f"{username}:{bcrypt_hash(password)}"
