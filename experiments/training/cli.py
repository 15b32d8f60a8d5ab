"""The command line the absl entry points share: every input is a flag, no stray words.

absl hands the words it does not parse as flags to `main` as positional arguments, and an
entry point that drops them loses input without a word: `predict --images a.png b.png` used to
predict `a.png` only, and `--prompt a photo` kept "a". `run` takes the place of `app.run`: it
reads the words after a list flag (`--images a.png b.png`) as that flag's values, refuses any
other positional argument by name, and only then calls `main`, so nothing is loaded or
compiled for a command line that would be misread. (The argparse entry points, `sweep` and the
tools, refuse unknown arguments on their own.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Sequence
from typing import Any

from absl import app


def spread_list_flags(argv: Sequence[str], names: Collection[str]) -> list[str]:
    """`argv` with the words after a multi-valued flag in `names` given as that flag.

    `--images a.png b.png c.png` becomes `--images a.png --images=b.png --images=c.png`
    (likewise after `--images=a.png`): the words up to the next one starting with "-" are the
    flag's values. Everything after "--" is left to absl, which treats it as positional.
    `argv[0]` is the program.
    """
    out, listing, takes_value = list(argv[:1]), None, False
    for i, word in enumerate(argv[1:], start=1):
        if word == "--":
            return out + list(argv[i:])
        if word.startswith("-"):
            name, eq, _ = word.lstrip("-").partition("=")
            listing = name if name in names else None
            takes_value = listing is not None and not eq  # absl reads the next word itself
            out.append(word)
        elif listing is not None and not takes_value:
            out.append(f"--{listing}={word}")
        else:
            out.append(word)
            takes_value = False
    return out


def _program(argv0: str) -> str:
    """How the user started this process: `python -m experiments.predict`, else argv[0]."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        return argv0
    return "python -m " + spec.name.removesuffix(".__main__")


def _positional_error(program: str, words: Sequence[str], list_flags: Collection[str]) -> str:
    """What `run` says of stray positional `words`: which they are and how to fix them."""
    lists = ", ".join(f"--{n}" for n in sorted(list_flags))
    verb = "takes" if len(list_flags) == 1 else "take"
    return (
        f"{program} takes no positional arguments, got {list(words)}: give every input as a "
        "flag (--name=value) and quote a value that holds spaces"
        + (f"; {lists} also {verb} a space-separated list of values" if lists else "")
    )


def run(main: Callable[[], Any], *, list_flags: Collection[str] = ()) -> None:
    """`absl.app.run(main)` for an entry point whose whole input is its flags.

    Parses `sys.argv` (spreading the words after each flag in `list_flags` over it) and exits
    with status 1, naming them, if any positional argument is left; then calls `main()`.
    """

    def parse(argv: list[str]) -> list[str]:
        rest = app.parse_flags_with_usage(spread_list_flags(argv, list_flags))
        if len(rest) > 1:
            error = _positional_error(_program(rest[0]), rest[1:], list_flags)
            sys.stderr.write(
                f"FATAL Flags parsing error: {error}\n"
                "Pass --helpshort or --helpfull to see help on flags.\n"
            )
            sys.exit(1)
        return rest

    app.run(lambda argv: main(), flags_parser=parse)
