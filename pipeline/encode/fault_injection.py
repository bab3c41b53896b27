"""A test-only switch that makes a shard attempt fail the ways real ones do.

`VLC_TEST_FAULTS` holds comma-separated `ACTION:SHARD_NAME:ATTEMPT` items; the fault fires when
that attempt (0 = the first) of that shard has read its first sample:
- `exit`: the actor's process dies at once (as when the OOM killer or a segfault takes it);
- `hang`: the decoder blocks in native code holding the GIL (as a stuck demuxer does), so the
  actor cannot even answer; only `--shard-timeout` and a kill end it;
- `wait-for-file=PATH`: the attempt stalls until PATH (no comma in it) exists, then goes on, so a
  test holds it mid-shard exactly as long as it needs to, however fast or slow the machine.
Unset in production: nothing here runs unless the variable is set.
"""

from __future__ import annotations

import ctypes
import os
import time

FAULTS_ENV = "VLC_TEST_FAULTS"


def inject_fault(shard_name: str, attempt: int) -> None:
    spec = os.environ.get(FAULTS_ENV)
    if not spec:
        return
    for item in spec.split(","):
        action, name, when = item.strip().rsplit(":", 2)
        if name != shard_name or int(when) != attempt:
            continue
        if action == "exit":
            os._exit(17)
        elif action == "hang":
            # PyDLL keeps the GIL during the call, like a native decoder that never returns.
            ctypes.PyDLL(None).sleep(1_000_000)
        elif action.startswith("wait-for-file="):
            release = action.removeprefix("wait-for-file=")
            while not os.path.exists(release):
                time.sleep(0.1)
        else:
            raise ValueError(f"{FAULTS_ENV}: unknown fault {action!r} in {item!r}")
