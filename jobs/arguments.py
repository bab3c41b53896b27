"""The argument parser every job uses: `--help` shows each default, and a glob the shell expanded gets a hint."""

from __future__ import annotations

import argparse
import os
from typing import NoReturn


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless it says its default itself or has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None or default is False
                or default == argparse.SUPPRESS
                or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"


class JobArgumentParser(argparse.ArgumentParser):
    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """Exit 2 with argparse's message, plus a hint when the extra arguments are files: an
        unquoted `shards/*.tar` that the shell expanded before the job saw it."""
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            extra = message.removeprefix(prefix).split()
            if any(os.path.exists(item) for item in extra):
                message += ("\nhint: these look like files your shell expanded from an unquoted pattern; "
                            "quote it so the job expands it, e.g. --input 'shards/*.tar'")
        super().error(message)
