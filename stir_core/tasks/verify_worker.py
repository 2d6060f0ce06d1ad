"""The grader's helper process: reads `[pred, gold]` JSON lines on stdin, writes `true`/`false`/`null`
(timed out) lines on stdout. It exists so math-verify's `signal.alarm` timeouts run on a main thread when
the caller evaluates on a background thread (see `stir_core.tasks.grade`). Usage: `python -m
stir_core.tasks.verify_worker TIMEOUT_S`."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from stir_core.tasks.grade import _verify_here

    timeout_s = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for line in sys.stdin:
        pred, gold = json.loads(line)
        sys.stdout.write(json.dumps(_verify_here(pred, gold, timeout_s)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
