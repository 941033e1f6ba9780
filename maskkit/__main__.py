"""The ``maskkit`` command (``maskkit ...``, ``python -m maskkit ...``): the stop-signal handlers
first, then the command line (:mod:`maskkit.cli`, whose imports take a fraction of a second)."""


def main() -> None:
    from .training.preemption import cli_stop_request

    cli_stop_request()  # before typer, rich, pydantic and torch: a SIGTERM from here on stops cleanly
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
