"""Slurm's text conventions as the emulator reproduces them (values from Slurm 22.05 sources)."""

from __future__ import annotations

import pytest

from bbp_notebooks.mockslurm.formats import (
    TimeFormatError,
    compress_hostlist,
    expand_hostlist,
    fit,
    memory_mb,
    parse_memory,
    parse_time_limit,
    sinfo_time_limit,
    slurm_duration,
    slurm_limit,
    squeue_duration,
)
from bbp_notebooks.mockslurm.getopt import Arg, GetoptError, Option, parse


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("30", 30),
        ("30:00", 30),
        ("30:01", 31),  # seconds round up
        ("1:00:00", 60),
        ("2-0", 2880),
        ("1-12", 2160),
        ("1-00:30", 1470),
        ("1-00:00:30", 1441),
        ("UNLIMITED", None),
        ("infinite", None),
        ("-1", None),
    ],
)
def test_time_limits_accept_every_slurm_format(text: str, minutes: int | None) -> None:
    assert parse_time_limit(text) == minutes


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "1-", "-5x", "1h"])
def test_invalid_time_limits_are_rejected(text: str) -> None:
    with pytest.raises(TimeFormatError):
        parse_time_limit(text)


def test_squeue_durations_use_the_short_form() -> None:
    assert squeue_duration(0) == "0:00"
    assert squeue_duration(65) == "1:05"
    assert squeue_duration(3600) == "1:00:00"
    assert squeue_duration(90061) == "1-01:01:01"
    assert squeue_duration(-1) == "INVALID"


def test_sacct_durations_always_show_hours() -> None:
    assert slurm_duration(0) == "00:00:00"
    assert slurm_duration(3661) == "01:01:01"
    assert slurm_duration(86400) == "1-00:00:00"
    assert slurm_limit(None) == "UNLIMITED"
    assert slurm_limit(30) == "00:30:00"


def test_sinfo_spells_infinite_time_limits_in_lower_case() -> None:
    assert sinfo_time_limit(None) == "infinite"
    assert sinfo_time_limit(30) == "30:00"
    assert sinfo_time_limit(1440) == "1-00:00:00"


def test_memory_is_printed_in_the_largest_exact_unit() -> None:
    assert memory_mb(4096) == "4G"
    assert memory_mb(1500) == "1500M"
    assert memory_mb(0) == "0"
    assert parse_memory("4G") == 4096
    assert parse_memory("512") == 512
    assert parse_memory("2048M") == 2048
    assert parse_memory("lots") is None


def test_host_lists_expand_and_compress_symmetrically() -> None:
    names = expand_hostlist("cn[01-03,07],login1")
    assert names == ["cn01", "cn02", "cn03", "cn07", "login1"]
    assert compress_hostlist(names) == "cn[01-03,07],login1"
    assert compress_hostlist(["gva-cn02"]) == "gva-cn02"


def test_fields_are_padded_and_cut_like_printf() -> None:
    assert fit("1234", 6, right=True) == "  1234"
    assert fit("abcdefghij", 8, right=False) == "abcdefgh"
    assert fit("abcdefghij", 8, right=True) == "abcdefgh"
    assert fit("nodes[1-9]", 4, right=False, cut=False) == "node"
    assert fit("value", 0, right=True) == "value"


OPTIONS = [
    Option("jobs", "j", ("jobs",), Arg.OPTIONAL),
    Option("format", "o", ("format",), Arg.REQUIRED),
    Option("noheader", "h", ("noheader",)),
    Option("name", "n", ("name",), Arg.REQUIRED),
]


def test_getopt_handles_bundles_attached_values_and_prefixes() -> None:
    parsed, positional = parse("squeue", ["-ho%i", "--form", "%j", "-j", "5", "--nam=x"], OPTIONS)
    assert parsed == [
        ("noheader", None),
        ("format", "%i"),
        ("format", "%j"),
        ("jobs", None),
        ("name", "x"),
    ]
    assert positional == ["5"]


def test_getopt_reports_unknown_options_like_glibc() -> None:
    with pytest.raises(GetoptError, match="squeue: unrecognized option '--bogus'"):
        parse("squeue", ["--bogus"], OPTIONS)
    with pytest.raises(GetoptError, match="squeue: invalid option -- 'z'"):
        parse("squeue", ["-z"], OPTIONS)
    with pytest.raises(GetoptError, match="requires an argument -- 'o'"):
        parse("squeue", ["-o"], OPTIONS)
