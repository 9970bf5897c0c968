"""Where a py-spy profile spends its time: `python -m bench.pyspy_summary profile.txt [--top 25]`.

Reads py-spy's raw (collapsed-stack) output, as written by `bench.submit --py-spy out.txt`, and prints per
thread its share of the samples, then the functions with the most samples on the stack (inclusive) and
at the top of it (self). Functions are named `qualname (file)`, line numbers dropped.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

FRAME_RE = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def frames(stack: str) -> list[str]:
    out = []
    for frame in stack.split(";"):
        match = FRAME_RE.match(frame)
        out.append(f"{match[1]} ({match[2]})" if match else frame)
    return out


def thread_of(names: list[str]) -> str:
    text = ";".join(names)
    if "_write_loop" in text:
        return "db-write"
    if "_worker (concurrent/futures/thread.py)" in text:
        return "db-read / executor"
    if "run_forever" in text or "run_until_complete" in text:
        return "event loop"
    return "other"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", help="only this thread (event loop, db-write, db-read / executor)")
    args = parser.parse_args(argv)
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    with open(args.path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count, names = int(count_text), frames(stack)
            thread = thread_of(names)
            threads[thread] += count
            if args.thread and thread != args.thread:
                continue
            total += count
            leaf[names[-1]] += count
            for name in set(names):
                inclusive[name] += count
    every = sum(threads.values())
    print(f"{every} samples")
    for name, count in threads.most_common():
        print(f"  {count / every:6.1%}  {name}")
    print(f"\ninclusive ({args.thread or 'all threads'}, {total} samples)")
    for name, count in inclusive.most_common(args.top):
        print(f"  {count / total:6.1%}  {name}")
    print("\nself")
    for name, count in leaf.most_common(args.top):
        print(f"  {count / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
