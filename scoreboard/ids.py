"""Ids that must never repeat but need not be secret: channel epochs, request ids.

They come from one generator seeded from os.urandom (reseeded in a forked child), not from uuid4, which
makes an os.urandom system call per id: several per submission, ~9 us each on the benchmark machine.
"""

from __future__ import annotations

import os
import random

_GENERATOR = random.Random()
os.register_at_fork(after_in_child=_GENERATOR.seed)  # a forked process draws its own sequence


def random_hex(bits: int) -> str:
    """`bits` random bits (a multiple of 4) as lowercase hex digits, zero-padded."""
    return f"{_GENERATOR.getrandbits(bits):0{bits // 4}x}"
