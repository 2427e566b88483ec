"""Slurm's printed values: states, durations, timestamps, exit codes and job ids."""

from __future__ import annotations

import datetime as dt

import pytest

from bbp_notebooks.slurm.values import (
    JobState,
    SlurmOutputError,
    parse_duration,
    parse_exit_code,
    parse_job_id,
    parse_state,
    parse_timestamp,
)


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("PENDING", JobState.PENDING),
        ("RUNNING", JobState.RUNNING),
        ("COMPLETING", JobState.COMPLETING),
        ("CONFIGURING", JobState.CONFIGURING),
        ("COMPLETED", JobState.COMPLETED),
        ("CANCELLED by 0", JobState.CANCELLED),
        ("CANCELLED by 1000", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
        ("FAILED", JobState.FAILED),
        ("TIMEOUT", JobState.TIMEOUT),
        ("NODE_FAIL", JobState.NODE_FAIL),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("PREEMPTED", JobState.PREEMPTED),
        ("BOOT_FAIL", JobState.BOOT_FAIL),
        ("DEADLINE", JobState.DEADLINE),
        ("SUSPENDED", JobState.SUSPENDED),
        ("REQUEUED", JobState.REQUEUED),
        ("PD", JobState.PENDING),
        ("CG", JobState.COMPLETING),
        ("OOM", JobState.OUT_OF_MEMORY),
        (" running \n", JobState.RUNNING),
    ],
)
def test_slurm_state_spellings_map_to_one_enum(text: str, state: JobState) -> None:
    assert parse_state(text) is state


def test_only_finished_states_are_terminal() -> None:
    terminal = {s for s in JobState if s.is_terminal}
    assert terminal == {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.OUT_OF_MEMORY,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.REVOKED,
    }
    assert not JobState.REQUEUED.is_terminal and not JobState.COMPLETING.is_terminal
    assert JobState.PENDING.is_active


@pytest.mark.parametrize("text", ["", "DONE", "RUN NING", "by 0"])
def test_an_unknown_state_is_an_error(text: str) -> None:
    with pytest.raises(SlurmOutputError):
        parse_state(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0:00", 0),
        ("4:01", 241),
        ("59:58", 3598),
        ("1:00:00", 3600),
        ("01:00:00", 3600),
        ("7:59:58", 28798),
        ("1-00:00:00", 86400),
        ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("N/A", None),
        ("INVALID", None),
        ("NOT_SET", None),
    ],
)
def test_durations(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["five", "1-02:03", "1:2:3:4", "-1:00", "12"])
def test_unreadable_durations_are_errors(text: str) -> None:
    with pytest.raises(SlurmOutputError):
        parse_duration(text)


def test_timestamps_are_naive_site_local_times() -> None:
    assert parse_timestamp("2026-11-25T10:00:00") == dt.datetime(2026, 11, 25, 10, 0, 0)
    for absent in ("N/A", "Unknown", "None", ""):
        assert parse_timestamp(absent) is None
    with pytest.raises(SlurmOutputError):
        parse_timestamp("25/11/2026 10:00")


def test_exit_codes_and_job_ids() -> None:
    assert parse_exit_code("2:0") == (2, 0)
    assert parse_exit_code("0:15") == (0, 15)
    for bad in ("2", "a:b", ""):
        with pytest.raises(SlurmOutputError):
            parse_exit_code(bad)
    assert parse_job_id(" 1000000\n") == 1000000
    for bad in ("", "0", "12_3", "12.batch", "+5", "1e3"):
        with pytest.raises(SlurmOutputError):
            parse_job_id(bad)


def test_every_job_state_has_exactly_one_category_and_every_end_a_name() -> None:
    from bbp_notebooks.operator.observe import ENDINGS
    from bbp_notebooks.slurm.values import JobCategory

    for state in JobState:
        assert isinstance(state.category, JobCategory), state
        assert state.is_terminal == (state.category is JobCategory.ENDED)
    ended = {s for s in JobState if s.category is JobCategory.ENDED}
    assert set(ENDINGS) == ended  # no second list of terminal states can disagree
    # The states that used to disagree or go unrecognised:
    assert JobState.SPECIAL_EXIT.category is JobCategory.QUEUED
    assert JobState.STOPPED.category is JobCategory.RUNNING
    assert JobState.RESIZING.category is JobCategory.RUNNING
