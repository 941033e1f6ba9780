"""torchrun with a one-line failure: ``python -m maskkit.launch [torchrun args] -m maskkit.cli run ...``.

It is ``torch.distributed.run`` itself (same arguments, same elastic agent), except that when a
worker fails it exits with the worker's exit status and leaves the error to the worker (which
prints one line, on rank 0), instead of printing the agent's ``ChildFailedError`` report.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values() if isinstance(f.exitcode, int) and f.exitcode > 0]
        return max(codes) if codes else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
