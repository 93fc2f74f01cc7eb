"""Tests of ``engine._settings``: environment parsing and validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine import EngineSettings, SettingsError, read_bool, read_int
from engine._settings import MAX_CONTENT_BYTES, MAX_MILLISECONDS

INT_VARIABLES = [
    "DOWNLOAD_DELAY_MIN_MS",
    "DOWNLOAD_DELAY_MAX_MS",
    "DOWNLOAD_SIZE_MIN_BYTES",
    "DOWNLOAD_SIZE_MAX_BYTES",
    "DOWNLOAD_RANDOM_SEED",
    "MAX_CONCURRENT_JOBS",
    "PROGRESS_STEP_PERCENT",
]


def names_variable(name: str) -> str:
    """Return a ``match`` pattern for a SettingsError message about ``name``."""
    return rf"^invalid {re.escape(name)}="


def test_empty_environ_gives_defaults():
    assert EngineSettings.from_environ({}) == EngineSettings()


def test_blank_values_give_defaults():
    environ = dict.fromkeys([*INT_VARIABLES, "DOWNLOAD_DELAY_ENABLED", "RESULTS_DIR"], "  ")
    environ["DOWNLOAD_AVAILABILITY"] = " "

    assert EngineSettings.from_environ(environ) == EngineSettings()


@pytest.mark.parametrize(
    ("name", "raw", "field", "expected"),
    [
        ("DOWNLOAD_DELAY_ENABLED", "false", "download_delay_enabled", False),
        ("DOWNLOAD_DELAY_MIN_MS", "2500", "download_delay_min_ms", 2500),
        ("DOWNLOAD_DELAY_MAX_MS", "130000", "download_delay_max_ms", 130_000),
        ("DOWNLOAD_SIZE_MIN_BYTES", "1024", "download_size_min_bytes", 1024),
        ("DOWNLOAD_SIZE_MAX_BYTES", "2_000_000", "download_size_max_bytes", 2_000_000),
        ("DOWNLOAD_AVAILABILITY", "multiple-of-7", "download_availability", "multiple-of-7"),
        ("DOWNLOAD_RANDOM_SEED", "42", "download_random_seed", 42),
        ("MAX_CONCURRENT_JOBS", "3", "max_concurrent_jobs", 3),
        ("PROGRESS_STEP_PERCENT", "10", "progress_step_percent", 10),
        ("RESULTS_DIR", "/var/lib/download-jobs", "results_dir", Path("/var/lib/download-jobs")),
    ],
)
def test_from_environ_reads_variable(name, raw, field, expected):
    settings = EngineSettings.from_environ({name: raw})

    assert getattr(settings, field) == expected


def test_from_environ_strips_whitespace():
    settings = EngineSettings.from_environ(
        {"MAX_CONCURRENT_JOBS": " 12 ", "DOWNLOAD_AVAILABILITY": " all ", "RESULTS_DIR": " /tmp/r "}
    )

    assert settings.max_concurrent_jobs == 12
    assert settings.download_availability == "all"
    assert settings.results_dir == Path("/tmp/r")


def test_random_seed_unset_is_none():
    assert EngineSettings.from_environ({}).download_random_seed is None


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "Yes", "on", " on "])
def test_read_bool_true_words(raw):
    assert read_bool({"FLAG": raw}, "FLAG", False) is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "NO", "off", " off "])
def test_read_bool_false_words(raw):
    assert read_bool({"FLAG": raw}, "FLAG", True) is False


@pytest.mark.parametrize("environ", [{}, {"FLAG": ""}, {"FLAG": "   "}])
def test_read_bool_unset_gives_default(environ):
    assert read_bool(environ, "FLAG", True) is True
    assert read_bool(environ, "FLAG", False) is False


def test_maybe_is_not_a_boolean():
    with pytest.raises(SettingsError, match=names_variable("DOWNLOAD_DELAY_ENABLED")) as raised:
        EngineSettings.from_environ({"DOWNLOAD_DELAY_ENABLED": "maybe"})

    assert str(raised.value) == (
        "invalid DOWNLOAD_DELAY_ENABLED='maybe': expected one of true/false, yes/no, on/off, 1/0"
    )
    assert raised.value.name == "DOWNLOAD_DELAY_ENABLED"
    assert raised.value.value == "maybe"


@pytest.mark.parametrize("name", INT_VARIABLES)
@pytest.mark.parametrize("raw", ["ten", "1.5", "1e3", "0x10", "12 ms", "-", "_"])
def test_non_number_names_variable(name, raw):
    with pytest.raises(SettingsError, match=names_variable(name)):
        EngineSettings.from_environ({name: raw})


@pytest.mark.parametrize("raw", ["+-5", "--5", "²"])
def test_malformed_digits_name_variable(raw):
    # Each passes the digits check in read_int but is no valid int() literal.
    with pytest.raises(SettingsError, match=names_variable("MAX_CONCURRENT_JOBS")):
        EngineSettings.from_environ({"MAX_CONCURRENT_JOBS": raw})


def test_non_number_message_states_range():
    with pytest.raises(SettingsError) as raised:
        EngineSettings.from_environ({"DOWNLOAD_DELAY_MAX_MS": "soon"})

    assert str(raised.value) == (
        "invalid DOWNLOAD_DELAY_MAX_MS='soon': "
        f"expected a whole number of milliseconds from 0 to {MAX_MILLISECONDS}"
    )


@pytest.mark.parametrize("name", ["DOWNLOAD_DELAY_MIN_MS", "DOWNLOAD_DELAY_MAX_MS"])
def test_negative_delay_names_variable(name):
    with pytest.raises(SettingsError, match=names_variable(name)):
        EngineSettings.from_environ({name: "-1"})


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("DOWNLOAD_DELAY_MAX_MS", str(MAX_MILLISECONDS + 1)),
        ("DOWNLOAD_SIZE_MAX_BYTES", str(MAX_CONTENT_BYTES + 1)),
        ("DOWNLOAD_SIZE_MIN_BYTES", "-1"),
        ("DOWNLOAD_RANDOM_SEED", "-1"),
        ("DOWNLOAD_RANDOM_SEED", str(2**63)),
        ("MAX_CONCURRENT_JOBS", "0"),
        ("PROGRESS_STEP_PERCENT", "0"),
        ("PROGRESS_STEP_PERCENT", "51"),
        ("DOWNLOAD_DELAY_MIN_MS", "9" * 21),
    ],
)
def test_out_of_range_names_variable(name, raw):
    with pytest.raises(SettingsError, match=names_variable(name)):
        EngineSettings.from_environ({name: raw})


def test_delay_min_above_max_names_min():
    environ = {"DOWNLOAD_DELAY_MIN_MS": "5000", "DOWNLOAD_DELAY_MAX_MS": "4000"}

    with pytest.raises(SettingsError, match=names_variable("DOWNLOAD_DELAY_MIN_MS")) as raised:
        EngineSettings.from_environ(environ)

    assert "DOWNLOAD_DELAY_MAX_MS (4000)" in str(raised.value)


def test_delay_min_above_default_max():
    with pytest.raises(SettingsError, match=names_variable("DOWNLOAD_DELAY_MIN_MS")):
        EngineSettings.from_environ({"DOWNLOAD_DELAY_MIN_MS": "200000"})


def test_size_min_above_max_names_min():
    environ = {"DOWNLOAD_SIZE_MIN_BYTES": "10", "DOWNLOAD_SIZE_MAX_BYTES": "9"}

    with pytest.raises(SettingsError, match=names_variable("DOWNLOAD_SIZE_MIN_BYTES")):
        EngineSettings.from_environ(environ)


def test_delay_min_equal_max_is_valid():
    environ = {"DOWNLOAD_DELAY_MIN_MS": "3000", "DOWNLOAD_DELAY_MAX_MS": "3000"}
    settings = EngineSettings.from_environ(environ)

    assert settings.download_delay_min_ms == 3000
    assert settings.download_delay_max_ms == 3000


@pytest.mark.parametrize("raw", ["sometimes", "ALL", "multiple-of-8"])
def test_unknown_availability_names_variable(raw):
    with pytest.raises(SettingsError, match=names_variable("DOWNLOAD_AVAILABILITY")):
        EngineSettings.from_environ({"DOWNLOAD_AVAILABILITY": raw})


def test_constructor_checks_delay_order():
    with pytest.raises(SettingsError, match=names_variable("DOWNLOAD_DELAY_MIN_MS")):
        EngineSettings(download_delay_min_ms=2, download_delay_max_ms=1)


@pytest.mark.parametrize(("raw", "expected"), [("0", 0), ("100", 100), ("+7", 7), ("1_000", 1000)])
def test_read_int_accepts_whole_numbers(raw, expected):
    assert read_int({"N": raw}, "N", 5, minimum=0, maximum=1000) == expected


def test_read_int_unset_gives_default():
    assert read_int({}, "N", 5, minimum=0, maximum=10) == 5


def test_read_int_names_unit_and_bounds():
    with pytest.raises(SettingsError) as raised:
        read_int({"N": "11"}, "N", 5, minimum=1, maximum=10, unit="jobs")

    assert str(raised.value) == "invalid N='11': expected a whole number of jobs from 1 to 10"
    assert raised.value.expected == "a whole number of jobs from 1 to 10"
