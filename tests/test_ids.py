"""scoreboard.ids: ids that never repeat, without a system call each."""

from __future__ import annotations

import os
import re

from scoreboard.ids import random_hex


def test_ids_are_zero_padded_hex_of_the_asked_width():
    assert all(re.fullmatch(r"[0-9a-f]{32}", random_hex(128)) for _ in range(1000))
    assert all(re.fullmatch(r"[0-9a-f]{1}", random_hex(4)) for _ in range(100))


def test_ids_do_not_repeat_in_a_process():
    assert len({random_hex(64) for _ in range(10_000)}) == 10_000


def test_a_forked_process_draws_other_ids_than_its_parent():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then gone without running the parent's cleanup
        os.write(write, ",".join(random_hex(64) for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 1000).decode().split(",")
    os.waitpid(pid, 0)
    assert len(child) == 5
    assert set(child).isdisjoint({random_hex(64) for _ in range(5)})
