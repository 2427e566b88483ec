"""Slurm's own text conventions: time limits, durations, dates, memory sizes and host lists.

Each function mirrors a routine of Slurm 22.05 (named in its docstring) so the emulator prints
and accepts exactly what the real commands do.
"""

from __future__ import annotations

import re
import time

# A time limit in minutes; None is Slurm's INFINITE ("UNLIMITED").
Minutes = int | None


class TimeFormatError(ValueError):
    """A time specification Slurm would reject."""


_UNLIMITED_WORDS = {"-1", "infinite", "unlimited"}


def parse_time_limit(text: str) -> Minutes:
    """Slurm's time_str2mins: minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S; seconds round up."""
    value = text.strip()
    if value.lower() in _UNLIMITED_WORDS:
        return None
    days = 0
    rest = value
    if "-" in value:
        day_part, rest = value.split("-", 1)
        if not day_part.isdigit() or not rest:
            raise TimeFormatError(text)
        days = int(day_part)
        parts = rest.split(":")
        if not all(p.isdigit() for p in parts) or len(parts) > 3:
            raise TimeFormatError(text)
        numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
        hours, minutes, seconds = numbers
    else:
        parts = rest.split(":")
        if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
            raise TimeFormatError(text)
        numbers = [int(p) for p in parts]
        if len(numbers) == 1:
            hours, minutes, seconds = 0, numbers[0], 0
        elif len(numbers) == 2:
            hours, minutes, seconds = 0, numbers[0], numbers[1]
        else:
            hours, minutes, seconds = numbers
    total = days * 1440 + hours * 60 + minutes + (1 if seconds > 0 else 0)
    return total


def squeue_duration(seconds: int) -> str:
    """squeue/sinfo _print_secs: M:SS, H:MM:SS, D-HH:MM:SS; INVALID outside 0..365 days."""
    if seconds < 0 or seconds > 365 * 24 * 3600:
        return "INVALID"
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def squeue_time_limit(limit: Minutes) -> str:
    return "UNLIMITED" if limit is None else squeue_duration(limit * 60)


def sinfo_time_limit(limit: Minutes) -> str:
    return "infinite" if limit is None else squeue_duration(limit * 60)


def slurm_duration(seconds: int) -> str:
    """parse_time.c secs2time_str (sacct Elapsed/Timelimit, scontrol): [D-]HH:MM:SS."""
    if seconds < 0:
        return "INVALID"
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def slurm_limit(limit: Minutes) -> str:
    return "UNLIMITED" if limit is None else slurm_duration(limit * 60)


def slurm_time(timestamp: float | None, missing: str = "N/A") -> str:
    """slurm_make_time_str with the default ISO format, in local time."""
    if timestamp is None:
        return missing
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(int(timestamp)))


def memory_mb(value_mb: int) -> str:
    """convert_num_unit(UNIT_MEGA, CONVERT_NUM_UNIT_EXACT): 4096 -> 4G, 1500 -> 1500M."""
    if value_mb == 0:
        return "0"
    units = ["M", "G", "T", "P"]
    number = value_mb
    index = 0
    while number % 1024 == 0 and index < len(units) - 1:
        number //= 1024
        index += 1
    return f"{number}{units[index]}"


_MEMORY_RE = re.compile(r"^(\d+)([KMGTkmgt]?)[Bb]?$")


def parse_memory(text: str) -> int | None:
    """sbatch --mem: integer with optional K/M/G/T suffix, default megabytes. None if invalid."""
    match = _MEMORY_RE.match(text.strip())
    if not match:
        return None
    number = int(match.group(1))
    unit = match.group(2).upper() or "M"
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    return max(1, int(number * factor + 0.999999)) if number else 0


_RANGE_RE = re.compile(r"^([^\[\],]*)\[([^\]]+)\](.*)$")


def expand_hostlist(expression: str) -> list[str]:
    """hostlist_create: "cn[01-03,07],login1" -> cn01 cn02 cn03 cn07 login1."""
    names: list[str] = []
    for item in _split_top_level(expression):
        if not item:
            continue
        match = _RANGE_RE.match(item)
        if not match:
            names.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        tails = expand_hostlist(suffix) if suffix else [""]
        for part in ranges.split(","):
            if "-" in part:
                low, high = part.split("-", 1)
                width = len(low)
                stems = [f"{prefix}{n:0{width}d}" for n in range(int(low), int(high) + 1)]
            else:
                stems = [f"{prefix}{part}"]
            names.extend(stem + tail for stem in stems for tail in tails)
    return names


def _split_top_level(expression: str) -> list[str]:
    items: list[str] = []
    depth = 0
    current = ""
    for char in expression:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return items


_NAME_RE = re.compile(r"^(.*?)(\d+)$")


def compress_hostlist(names: list[str]) -> str:
    """hostlist_ranged_string: consecutive numeric suffixes of equal width collapse to ranges."""
    if not names:
        return ""
    groups: dict[tuple[str, int], list[int]] = {}
    order: list[tuple[str, int] | str] = []
    for name in names:
        match = _NAME_RE.match(name)
        if not match:
            if name not in order:
                order.append(name)
            continue
        prefix, digits = match.groups()
        key = (prefix, len(digits))
        if key not in groups:
            groups[key] = []
            order.append(key)
        number = int(digits)
        if number not in groups[key]:
            groups[key].append(number)
    rendered: list[str] = []
    for entry in order:
        if isinstance(entry, str):
            rendered.append(entry)
            continue
        prefix, width = entry
        numbers = sorted(groups[entry])
        if len(numbers) == 1:
            rendered.append(f"{prefix}{numbers[0]:0{width}d}")
            continue
        spans: list[str] = []
        start = previous = numbers[0]
        for number in numbers[1:] + [-2]:
            if number == previous + 1:
                previous = number
                continue
            if start == previous:
                spans.append(f"{start:0{width}d}")
            else:
                spans.append(f"{start:0{width}d}-{previous:0{width}d}")
            start = previous = number
        rendered.append(f"{prefix}[{','.join(spans)}]")
    return ",".join(rendered)


def fit(value: str, width: int, right: bool, cut: bool = True) -> str:
    """squeue/sinfo _print_str: "%<w>s" right (cut only if asked), "%.<w>s" left (always cut)."""
    if width == 0:
        return value
    if right:
        text = value.rjust(width)
        return text[:width] if cut else text
    return value[:width].ljust(width)


def parse_datetime(text: str, now: float | None = None) -> float | None:
    """parse_time() subset used by sacct -S/-E: ISO dates, HH:MM[:SS], MMDD[YY], now[-N<unit>]."""
    current = time.time() if now is None else now
    value = text.strip()
    lowered = value.lower()
    if lowered.startswith("now"):
        rest = lowered[3:]
        if not rest:
            return current
        match = re.match(r"^([+-])(\d+)([a-z]*)$", rest)
        if not match or (match.group(3) and match.group(3)[0] not in "smhdw"):
            return None
        sign = 1 if match.group(1) == "+" else -1
        unit = match.group(3) or "seconds"
        factor = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit[0]]
        return current + sign * int(match.group(2)) * factor
    if lowered in ("today", "midnight"):
        local = time.localtime(current)
        return time.mktime((local.tm_year, local.tm_mon, local.tm_mday, 0, 0, 0, 0, 0, -1))
    for pattern in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(value, pattern))
        except ValueError:
            continue
    match = re.match(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$", value)
    if match:
        local = time.localtime(current)
        return time.mktime(
            (
                local.tm_year,
                local.tm_mon,
                local.tm_mday,
                int(match.group(1)),
                int(match.group(2)),
                int(match.group(3) or 0),
                0,
                0,
                -1,
            )
        )
    match = re.match(r"^(\d{2})(\d{2})(\d{2})?$", value)
    if match:
        local = time.localtime(current)
        year = 2000 + int(match.group(3)) if match.group(3) else local.tm_year
        return time.mktime((year, int(match.group(1)), int(match.group(2)), 0, 0, 0, 0, 0, -1))
    return None
