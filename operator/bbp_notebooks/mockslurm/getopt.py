"""GNU getopt_long as the Slurm commands use it: bundled short options, attached or separate
arguments, --long=value, unambiguous long-option prefixes, and glibc's error messages."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Arg(Enum):
    NONE = 0
    REQUIRED = 1
    OPTIONAL = 2


@dataclass(frozen=True)
class Option:
    """One option: its key (what the handler switches on), short letter and long names."""

    key: str
    short: str | None = None
    long: tuple[str, ...] = ()
    arg: Arg = Arg.NONE


class GetoptError(Exception):
    """The lines glibc's getopt prints to stderr (the command adds its own "Try" hint)."""


def parse(
    prog: str,
    argv: list[str],
    options: list[Option],
    *,
    stop_at_first_positional: bool = False,
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Return (key, value) pairs in command-line order and the positional arguments."""
    shorts = {opt.short: opt for opt in options if opt.short}
    longs: dict[str, Option] = {}
    for opt in options:
        for name in opt.long:
            longs[name] = opt
    parsed: list[tuple[str, str | None]] = []
    positional: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if word == "--":
            positional.extend(argv[index:])
            break
        if word.startswith("--"):
            name, has_value, value = word[2:].partition("=")
            option = _match_long(prog, name, longs)
            if option.arg is Arg.NONE:
                if has_value:
                    raise GetoptError(f"{prog}: option '--{name}' doesn't allow an argument")
                parsed.append((option.key, None))
            elif option.arg is Arg.REQUIRED:
                if has_value:
                    parsed.append((option.key, value))
                elif index < len(argv):
                    parsed.append((option.key, argv[index]))
                    index += 1
                else:
                    raise GetoptError(f"{prog}: option '--{name}' requires an argument")
            else:
                parsed.append((option.key, value if has_value else None))
            continue
        if word.startswith("-") and word != "-":
            position = 1
            while position < len(word):
                letter = word[position]
                position += 1
                short = shorts.get(letter)
                if short is None:
                    raise GetoptError(f"{prog}: invalid option -- '{letter}'")
                if short.arg is Arg.NONE:
                    parsed.append((short.key, None))
                    continue
                rest = word[position:]
                if rest:
                    parsed.append((short.key, rest))
                elif short.arg is Arg.REQUIRED:
                    if index >= len(argv):
                        raise GetoptError(f"{prog}: option requires an argument -- '{letter}'")
                    parsed.append((short.key, argv[index]))
                    index += 1
                else:
                    parsed.append((short.key, None))
                break
            continue
        positional.append(word)
        if stop_at_first_positional:
            positional.extend(argv[index:])
            break
    return parsed, positional


def _match_long(prog: str, name: str, longs: dict[str, Option]) -> Option:
    if name in longs:
        return longs[name]
    candidates = {opt.key: opt for long_name, opt in longs.items() if long_name.startswith(name)}
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    if not candidates or not name:
        raise GetoptError(f"{prog}: unrecognized option '--{name}'")
    raise GetoptError(f"{prog}: option '--{name}' is ambiguous")
