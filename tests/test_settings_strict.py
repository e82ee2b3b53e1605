"""Strict configuration: durations in bounds, no zero where it means nothing, every variable
accounted for, every wrong key named at once, and no value that ends in a traceback."""

from __future__ import annotations

import string
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeper.errors import ConfigError
from sweeper.settings import RuleSettings, Settings, load_settings
from tests.fakes import TOKEN

BASE = f"""
[api]
base_url = "https://platform.example.test"
token = "{TOKEN}"
"""
REQUIRED = {"api": {"base_url": "https://platform.example.test", "token": TOKEN}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def config_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ=environ or {})
    message = str(caught.value)
    assert TOKEN not in message
    return message


def with_section(section: str, lines: str) -> str:
    """BASE plus a section (keys of [api] go into BASE's own table)."""
    if section == "api":
        return BASE + lines
    return BASE + f"[{section}]\n{lines}"


POSITIVE = [
    ("api", "timeout"),
    ("schedule", "interval"),
    ("sweep", "stale_after"),
    ("sweep", "deadline"),
    ("sweep", "max_clock_skew"),
]
ZERO_ALLOWED = [
    ("schedule", "jitter"),
    ("api", "retry_backoff"),
    ("api", "retry_backoff_max"),
    ("api", "max_retry_after"),
]


@pytest.mark.parametrize(("section", "key"), POSITIVE)
@pytest.mark.parametrize("zero", ['"0s"', "0", '"0m"', "0.0", '"0.0000001s"'])
def test_zero_is_refused_where_it_means_nothing(
    tmp_path: Path, section: str, key: str, zero: str
) -> None:
    """stale_after, deadline, timeout, interval, max_clock_skew are never zero."""
    message = config_error(tmp_path, with_section(section, f"{key} = {zero}\n"))
    assert f"{section}.{key}: must be longer than 0s" in message


@pytest.mark.parametrize(("section", "key"), ZERO_ALLOWED)
def test_zero_stays_allowed_where_it_has_a_meaning(tmp_path: Path, section: str, key: str) -> None:
    """schedule.jitter = "0s" is no jitter; a retry wait of zero is no wait."""
    settings_, _ = load_settings(write(tmp_path, with_section(section, f'{key} = "0s"\n')), {}, {})
    assert getattr(getattr(settings_, section), key) == timedelta(0)


@pytest.mark.parametrize(("section", "key"), POSITIVE + ZERO_ALLOWED)
@pytest.mark.parametrize(
    "huge", ['"3000000000d"', '"1000000d"', '"3651d"', "1e300", "inf", "9223372036854775807"]
)
def test_more_than_3650_days_is_refused(tmp_path: Path, section: str, key: str, huge: str) -> None:
    """Huge durations are a clean error naming the key, never an OverflowError."""
    message = config_error(tmp_path, with_section(section, f"{key} = {huge}\n"))
    assert f"{section}.{key}: too long: at most 3650d" in message


def test_3650_days_is_the_limit_and_allowed(tmp_path: Path) -> None:
    """Exactly 3650d loads."""
    settings_, _ = load_settings(
        write(tmp_path, BASE + '[sweep]\nstale_after = "3650d"\n'), environ={}
    )
    assert settings_.sweep.stale_after == timedelta(days=3650)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            '[sweep]\nstale_after = "never"\n',
            'sweep.stale_after: "never" is allowed only in a rule',
        ),
        (
            '[[sweep.rules]]\nname = "r"\nstale_after = "0s"\n',
            "sweep.rules.0.stale_after: must be longer than 0s",
        ),
        (
            '[[sweep.rules]]\nname = "r"\nstale_after = "1000000d"\n',
            "sweep.rules.0.stale_after: too long",
        ),
        ('[sweep]\nstatus = "failed"\n', "sweep.status: must be one of FAILED, CANCELLED"),
        ('[sweep]\nstatus = "SUCCEEDED"\n', "sweep.status: must be one of FAILED, CANCELLED"),
        (
            '[[sweep.rules]]\nname = "r"\nstatus = "cancelled"\n',
            "sweep.rules.0.status: must be one of FAILED, CANCELLED",
        ),
        ('[log]\nformat = "xml"\n', "log.format: must be one of json, console, auto"),
        ('[log]\nlevel = "loud"\n', "log.level: must be one of debug, info, warning, error"),
        ('[schedule]\ncron = "0 0 31 2 *"\n', "schedule.cron: never fires"),
        ('[schedule]\ncron = "0 0 30 2 *"\n', "schedule.cron: never fires"),
        ('[schedule]\ncron = "0 0 * * 9"\n', "schedule.cron: not a five-field cron expression"),
        ('[schedule]\ntimezone = "UTC/"\n', "schedule.timezone: not a known time zone"),
        ('[schedule]\ntimezone = ""\n', "schedule.timezone: not a known time zone"),
        ('[server]\nlisten = "0.0.0.0:\u00b2"\n', "server.listen: must be host:port"),
        ('[server]\nlisten = "h:' + "9" * 5000 + '"\n', "server.listen: must be host:port"),
        ("[api]\nmax_rate = inf\n", "api.max_rate"),
        ('[sweep]\nerror_message = "{idle.real}"\n', "sweep.error_message: bad placeholder"),
        ('[sweep]\nerror_message = "{idle:>999999999}"\n', "sweep.error_message: bad placeholder"),
        ('[sweep]\nerror_message = "{idle!r}"\n', "sweep.error_message: bad placeholder"),
        ('[sweep]\nerror_message = "{"\n', "sweep.error_message: not a message template"),
        ('[sweep]\nerror_message = "{0}"\n', "sweep.error_message: bad placeholder"),
        ('[api]\ntoken_file = "/x\\u0000y"\n', "api.token"),
    ],
)
def test_wrong_values_are_named_with_a_reason(tmp_path: Path, extra: str, expected: str) -> None:
    """Each wrong value names its key and says what is allowed."""
    text = BASE + extra
    if extra.startswith("[api]"):
        text = BASE + extra.removeprefix("[api]\n")
    assert expected in config_error(tmp_path, text)


def test_a_rule_may_say_never_and_inherit(tmp_path: Path) -> None:
    """A rule's stale_after: `never` exempts, left out it inherits [sweep]'s."""
    text = BASE + (
        '[sweep]\nstale_after = "3h"\n'
        '[[sweep.rules]]\nname = "a"\nstale_after = "never"\n'
        '[[sweep.rules]]\nname = "b"\n'
    )
    settings_, _ = load_settings(write(tmp_path, text), environ={})
    never, inherited = settings_.sweep.build_rules().overrides
    assert never.stale_after is None
    assert inherited.stale_after == timedelta(hours=3)
    shown = settings_.redacted()["sweep"]["rules"]
    assert [r["stale_after"] for r in shown] == ["never", "3h"]  # the value in force


def test_message_placeholders_stay_usable(tmp_path: Path) -> None:
    """Plain placeholders and doubled braces are fine."""
    text = BASE + '[sweep]\nerror_message = "{idle} {stale_after} {status} {rule} {{x}}"\n'
    settings_, _ = load_settings(write(tmp_path, text), environ={})
    assert settings_.sweep.error_message.startswith("{idle}")


# Environment variables


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("org-a,org-b", ["org-a", "org-b"]),
        ("org-a", ["org-a"]),
        (" org-a , org-b ,", ["org-a", "org-b"]),
        ('["org-a", "org,b"]', ["org-a", "org,b"]),
        ("", []),
    ],
)
def test_list_variables_are_comma_separated_or_json(
    tmp_path: Path, value: str, expected: list[str]
) -> None:
    """SWEEPER_SWEEP__ORGANIZATIONS=org-a,org-b, or a JSON list."""
    environ = {"SWEEPER_SWEEP__ORGANIZATIONS": value, "SWEEPER_SWEEP__EXCLUDE_ORGANIZATIONS": value}
    settings_, _ = load_settings(write(tmp_path, BASE), environ=environ)
    assert settings_.sweep.organizations == expected
    assert settings_.sweep.exclude_organizations == expected


def test_rules_can_come_from_a_json_variable(tmp_path: Path) -> None:
    """A table or list of tables is JSON in an environment variable."""
    environ = {"SWEEPER_SWEEP__RULES": '[{"name": "r", "stale_after": "30m"}]'}
    settings_, _ = load_settings(write(tmp_path, BASE), environ=environ)
    assert settings_.sweep.rules[0].stale_after == timedelta(minutes=30)


def test_scalar_variables_and_lower_case_names(tmp_path: Path) -> None:
    """Scalars are parsed by their key's type; names are matched without regard to case."""
    environ = {
        "SWEEPER_SWEEP__MAX_STEPS": "7",
        "sweeper_sweep__dry_run": "true",
        "SWEEPER_SCHEDULE__CRON": "0 6 1,15 * 1",
        "SWEEPER_CONFIG": "",
        "SWEEPER_DEV_TOKEN": "whatever",
    }
    settings_, _ = load_settings(write(tmp_path, BASE), environ=environ)
    assert settings_.sweep.max_steps == 7
    assert settings_.sweep.dry_run is True
    assert settings_.schedule.cron == "0 6 1,15 * 1"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SWEEPER_SWEEP_STALE_AFTER", "SWEEPER_SWEEP_STALE_AFTER: names no configuration key"),
        ("SWEEPER_SWEEPER__X", "SWEEPER_SWEEPER__X: names no configuration key"),
        ("SWEEPER_SWEEP__STALEAFTER", "SWEEPER_SWEEP__STALEAFTER: names no configuration key"),
        ("SWEEPER_SWEEP", "SWEEPER_SWEEP: names no configuration key"),
        ("SWEEPER_API___TOKEN", "SWEEPER_API___TOKEN: names no configuration key"),
        ("SWEEPER_SWEEP__RULES__0__NAME", "SWEEPER_SWEEP__RULES__0__NAME: names no"),
        ("SWEEPER_", "SWEEPER_: names no configuration key"),
        ("SWEEPER_TOKEN", "SWEEPER_TOKEN: names no configuration key"),
        ("sweeper_config", "sweeper_config: names no configuration key"),
    ],
)
def test_a_variable_that_names_no_key_is_an_error(tmp_path: Path, name: str, expected: str) -> None:
    """A misspelled SWEEPER_ variable is refused by name, not silently ignored."""
    message = config_error(tmp_path, BASE, environ={name: "1m"})
    assert expected in message
    assert "1m" not in message.replace("SWEEPER_", "")


def test_unknown_key_message_says_what_is_wrong(tmp_path: Path) -> None:
    """One underscore where two belong; a section with no such key."""
    message = config_error(
        tmp_path, BASE, environ={"SWEEPER_SWEEP_STALE_AFTER": "1m", "SWEEPER_SWEEP__BOGUS": "1"}
    )
    assert "two underscores" in message
    assert "sweep has no key 'bogus'" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "SWEEPER_SWEEP__ORGANIZATIONS",
            "[not json",
            "SWEEPER_SWEEP__ORGANIZATIONS: not valid JSON",
        ),
        ("SWEEPER_SWEEP__RULES", "name=r", "SWEEPER_SWEEP__RULES: not valid JSON"),
        ("SWEEPER_SWEEP__RULES", "[" * 100000, "SWEEPER_SWEEP__RULES: not valid JSON"),
        ("SWEEPER_SWEEP__STALE_AFTER", "0s", "sweep.stale_after (from SWEEPER_SWEEP__STALE_AFTER)"),
        ("SWEEPER_SWEEP__MAX_STEPS", "lots", "sweep.max_steps (from SWEEPER_SWEEP__MAX_STEPS)"),
        ("SWEEPER_SWEEP__ORGANIZATIONS", "[1, 2]", "sweep.organizations.0 (from SWEEPER_SWEEP__"),
    ],
)
def test_bad_variable_values_name_the_variable(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    """A wrong value from the environment says which variable it came from."""
    assert expected in config_error(tmp_path, BASE, environ={name: value})


def test_every_wrong_key_and_variable_in_one_message(tmp_path: Path) -> None:
    """File keys, variables and the token problem come back together, not one per run."""
    text = (
        '[api]\nbase_url = "https://p.example.test"\ntimeout = "0s"\n'
        '[sweep]\nstale_after = "3000000000d"\nstatus = "failed"\n'
        '[schedule]\ncron = "0 0 31 2 *"\n'
    )
    message = config_error(
        tmp_path,
        text,
        environ={"SWEEPER_SWEEP_STALE_AFTER": "1m", "SWEEPER_SWEEP__DEADLINE": "0"},
    )
    for part in (
        "SWEEPER_SWEEP_STALE_AFTER",
        "api.timeout",
        "sweep.stale_after",
        "sweep.status",
        "sweep.deadline (from SWEEPER_SWEEP__DEADLINE)",
        "schedule.cron",
        "api.token: required",
    ):
        assert part in message, part


def test_flags_override_the_environment_without_blame(tmp_path: Path) -> None:
    """A flag that replaces a variable's value is not reported as coming from the variable."""
    with pytest.raises(ConfigError) as caught:
        load_settings(
            write(tmp_path, BASE),
            {"sweep": {"max_steps": -1}},
            environ={"SWEEPER_SWEEP__MAX_STEPS": "3"},
        )
    assert "sweep.max_steps:" in str(caught.value)
    assert "from SWEEPER_SWEEP__MAX_STEPS" not in str(caught.value)


# No value, however absurd, ends in anything but a ConfigError.

TOML_SCALARS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["0s", "never", "inherit", "3650d", "3651d", "1e400", "FAILED", "*", ""]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


def _keys() -> list[tuple[str, str]]:
    keys = []
    for section, field in Settings.model_fields.items():
        model: Any = field.annotation
        keys += [(section, key) for key in model.model_fields]
        keys.append((section, "no_such_key"))
    keys += [("rule", key) for key in RuleSettings.model_fields]
    return keys


def _settle(tmp_path: Path, data: dict[str, Any], environ: dict[str, str]) -> None:
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), **environ}
    try:
        load_settings(None, data, environ=environ)
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert TOKEN not in message


# No deadline: a per-example wall-time limit fails on a loaded machine, not on a bug.
@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(_keys()), value=TOML_VALUES)
def test_no_toml_value_ends_in_a_traceback(
    tmp_path: Path, key: tuple[str, str], value: object
) -> None:
    """Any value of any key loads or is a ConfigError (hypothesis over TOML's types)."""
    section, name = key
    data: dict[str, Any] = {"api": dict(REQUIRED["api"])}
    if section == "rule":
        data["sweep"] = {"rules": [{"name": "r", name: value}]}
    else:
        data.setdefault(section, {})[name] = value
    _settle(tmp_path, data, {})


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(_keys()),
    value=st.text(alphabet=string.printable + "\u00b2\u0661", max_size=40),
)
def test_no_environment_value_ends_in_a_traceback(
    tmp_path: Path, key: tuple[str, str], value: str
) -> None:
    """Any text in any SWEEPER_<SECTION>__<KEY> loads or is a ConfigError."""
    section, name = key
    variable = f"SWEEPER_{'SWEEP__RULES' if section == 'rule' else section + '__' + name}"
    _settle(tmp_path, dict(REQUIRED), {variable.upper(): value})


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=TOML_VALUES, top=st.text(max_size=10))
def test_no_section_shape_ends_in_a_traceback(tmp_path: Path, section: object, top: str) -> None:
    """A section that is not a table, or an unknown top-level key, is a ConfigError."""
    _settle(tmp_path, {**REQUIRED, "sweep": section, top or "x": section}, {})


def test_toml_dates_and_times_are_not_durations(tmp_path: Path) -> None:
    """TOML's own date and time types are refused where a duration belongs."""
    for value in (datetime(2026, 1, 1), date(2026, 1, 1), time(1, 2)):
        with pytest.raises(ConfigError, match=r"sweep\.deadline: not a duration"):
            load_settings(None, {**REQUIRED, "sweep": {"deadline": value}}, environ={})
