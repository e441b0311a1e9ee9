"""The ``haqa`` command line. One Typer app; each group of commands lives in its own module.

``main`` is the one place where a ``HaqaError`` becomes a one-line message and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from haqa.errors import HaqaError, no_room_message

app = typer.Typer(
    name="haqa",
    help="Hardware-aware quantization agent: fine-tune (QLoRA), export to GGUF, and tune "
    "llama.cpp on this machine, measured, with every result stored in DuckDB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _register() -> None:
    # Imported for their side effect of adding commands; each module keeps heavy imports lazy.
    from haqa.cli import (  # noqa: F401
        accuracy,
        agents,
        cluster,
        grid,
        hardware,
        speed,
        store_views,
        tui_cmd,
        zoo,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    _register()
    try:
        # Outside standalone mode click returns a command's ``typer.Exit`` code instead of
        # exiting with it.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            return code
    except HaqaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except typer.Abort:
        return 1
    except typer.exceptions.TyperException as exc:  # usage errors (non-standalone mode)
        show = getattr(exc, "show", None)
        if show is None:
            raise
        show()
        return int(getattr(exc, "exit_code", 2) or 2)
    except Exception as exc:
        # A full disk is the user's to fix, not a bug: one line, exit 2. Anything else is a
        # bug and keeps its traceback.
        message = no_room_message(exc)
        if message is None:
            raise
        print(f"error: {HaqaError(message)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
