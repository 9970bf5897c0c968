"""`python -m scoreboard.app` on uvloop, without a setting: `python -m bench.uvloop_app --config ...`.

The server calls asyncio.run(), which takes its loop from the event loop policy; installing uvloop's
policy first is all it takes (`pip install uvloop`). Used by `bench.submit --uvloop`.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from scoreboard.app import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    main(sys.argv[1:])
