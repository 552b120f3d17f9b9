"""One engine in its own process, driven by the peer benchmark over a pipe.

``python -m pipeline.bench.worker prepare|serve MODULE SPEC_JSON``

Replies are JSON lines on the process's original stdout; everything the libraries print
goes to stderr instead (fd 1 is pointed at fd 2), so chatter cannot corrupt the protocol.
``prepare`` writes the engine's artifact and replies once. ``serve`` loads the artifact
for ``spec["output"]`` (``labels`` or ``logits``), runs it once (saving the result to
``spec["result_path"]``: an int32 ``[H, W]`` label map or the float32 logits), warms up,
replies ``ready`` (with the runner's ``settings``, if it has them), then answers commands
read from stdin, one JSON object a line:

- ``{"cmd": "time", "n": N}``: N timed runs -> ``{"times_ms": [...]}``;
- ``{"cmd": "stats"}``: ``{"peak_rss_mb": ...}`` of this process (VmHWM);
- ``{"cmd": "profile", "n": N}``: ``{"profile": [{"kernel", "calls", "ms"}, ...]}`` per
  inference over N runs, or ``null`` when the engine has no profiler;
- ``{"cmd": "quit"}`` (or end of stdin): exit.

Errors are replied as ``{"ok": false, "error": "one line"}`` (traceback on stderr).
Standard library and NumPy only: this module also runs under ``.venv-ref``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import IO

import numpy as np

from pipeline.common.memory import peak_rss_mb


def _protocol_stream() -> IO[str]:
    """Keep the original stdout for replies and send fd 1 (C and Python prints) to stderr."""
    sys.stdout.flush()
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return proto


def _reply(proto: IO[str], **payload: object) -> None:
    proto.write(json.dumps({"ok": True, **payload}) + "\n")
    proto.flush()


def _serve(module, spec: dict, proto: IO[str]) -> None:  # noqa: ANN001 - an engine module
    run = module.load(spec)
    x = np.load(spec["input_path"])
    t0 = time.perf_counter()
    result = np.asarray(run(x))
    first_ms = (time.perf_counter() - t0) * 1e3
    if spec.get("output", "labels") == "labels":
        result = result.reshape(result.shape[-2:]).astype(np.int32)
    np.save(spec["result_path"], result)
    warm_ms = first_ms
    for _ in range(int(spec.get("warmup", 3))):
        t0 = time.perf_counter()
        run(x)
        warm_ms = (time.perf_counter() - t0) * 1e3
    _reply(proto, event="ready", first_ms=first_ms, warm_ms=warm_ms, rss_mb=peak_rss_mb(),
           settings=getattr(run, "settings", None))
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "time":
            times = []
            for _ in range(int(cmd["n"])):
                t0 = time.perf_counter()
                run(x)
                times.append((time.perf_counter() - t0) * 1e3)
            _reply(proto, times_ms=times)
        elif cmd["cmd"] == "profile":  # per-kernel times, where the engine offers them
            profile = getattr(run, "profile", None)
            _reply(proto, profile=profile(x, int(cmd["n"])) if profile else None)
        elif cmd["cmd"] == "stats":
            _reply(proto, peak_rss_mb=peak_rss_mb())
        elif cmd["cmd"] == "quit":
            return
        else:
            raise ValueError(f"unknown command {cmd['cmd']!r}")


def main(argv: list[str]) -> int:
    proto = _protocol_stream()
    try:
        mode, module_name, spec_json = argv
        spec = json.loads(spec_json)
        module = importlib.import_module(module_name)
        if mode == "prepare":
            _reply(proto, **module.prepare(spec))
        elif mode == "serve":
            _serve(module, spec, proto)
        else:
            raise ValueError(f"unknown mode {mode!r}")
    except BaseException as e:  # every failure, Ctrl-C included, is one reply line
        traceback.print_exc()
        message = " ".join(str(e).split()) or type(e).__name__
        proto.write(json.dumps({"ok": False, "error": f"{type(e).__name__}: {message}"[:400]}) + "\n")
        proto.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
