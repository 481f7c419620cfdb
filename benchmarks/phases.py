"""Run a Python program and write when its phases happened (the command figure's breakdown).

    python benchmarks/phases.py EVENTS.json -m relu_doctor scan CKPT ...
    python benchmarks/phases.py EVENTS.json benchmarks/minimal_scan.py CKPT ...

Knows nothing of relu-doctor: it wraps ``torch.load`` and ``nn.Module.__call__`` (outermost
calls only) and writes wall-clock stamps (``time.time()``) to EVENTS.json at the end:

- ``load_start``: the first ``torch.load`` call;
- ``forward_first``: the first outermost module call (the shape probe, under ``no_grad``);
- ``infer_first`` / ``infer_end``: the first and last outermost module call under
  ``inference_mode`` (the scanned batches);
- ``end``: when the program returned (report built and written).

The parent records when it started the process and when the process ended, so the phases
are: interpreter + imports (start -> load_start), load (load_start -> forward_first: file,
arch, weights), probe (-> infer_first), forwards (-> infer_end), report + write
(-> end) and exit (end -> process gone). The wrappers cost about a microsecond per module
call; this run is for the breakdown only, the figure itself is timed without them.
"""

from __future__ import annotations

import json
import runpy
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    out, target = Path(sys.argv[1]), sys.argv[2:]
    events: dict[str, float] = {"helper": time.time()}

    import torch

    load = torch.load

    def timed_load(*args: Any, **kwargs: Any) -> Any:
        events.setdefault("load_start", time.time())
        return load(*args, **kwargs)

    torch.load = timed_load
    call = torch.nn.Module.__call__
    depth = [0]

    def timed_call(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if depth[0]:
            return call(self, *args, **kwargs)
        depth[0] = 1
        start = time.time()
        try:
            return call(self, *args, **kwargs)
        finally:
            depth[0] = 0
            events.setdefault("forward_first", start)
            if torch.is_inference_mode_enabled():
                events.setdefault("infer_first", start)
                events["infer_end"] = time.time()

    torch.nn.Module.__call__ = timed_call  # type: ignore[method-assign]
    code: Any = 0
    try:
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = target
            runpy.run_path(target[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    events["end"] = time.time()
    out.write_text(json.dumps(events))
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
