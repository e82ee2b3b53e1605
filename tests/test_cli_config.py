"""The real CLI on a wrong configuration: exit 78, one config.invalid naming every wrong key,
no traceback, and no request to the platform."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import Platform, environment, sweeper, write_config
from tests.fakes import TOKEN

COMMANDS = (["run", "--once"], ["run"], ["check-config"], ["mark", "s", "--org", "o"])


def assert_refused(result_code: int, stderr: str, events: list[dict[str, object]]) -> str:
    assert result_code == 78
    assert "Traceback" not in stderr
    assert TOKEN not in stderr
    (invalid,) = [e for e in events if e["event"] == "config.invalid"]
    return str(invalid["error"])


def test_every_wrong_key_and_variable_in_one_event(stand_in: Platform, tmp_path: Path) -> None:
    """Bad durations, a never-firing cron, a wrong enum and misspelled variables: one event."""
    extra = (
        'timeout = "0s"\n'
        '[schedule]\ncron = "0 0 31 2 *"\n'
        '[sweep]\nstale_after = "3000000000d"\ndeadline = "1000000d"\nstatus = "failed"\n'
        '[[sweep.rules]]\nname = "r"\nstale_after = "0s"\n'
    )
    config = write_config(tmp_path, stand_in.base_url, extra)
    env = environment(
        SWEEPER_SWEEP_STALE_AFTER="1m",
        SWEEPER_SWEEPER__X="1",
        SWEEPER_SWEEP__MAX_CLOCK_SKEW="0",
        SWEEPER_SWEEP__ORGANIZATIONS="org-a,org-b",
    )
    for command in COMMANDS:
        result = sweeper("--config", str(config), *command, env=env)
        error = assert_refused(result.code, result.stderr, result.events)
        for part in (
            "SWEEPER_SWEEP_STALE_AFTER",
            "SWEEPER_SWEEPER__X",
            "api.timeout: must be longer than 0s",
            "schedule.cron: never fires",
            "sweep.stale_after: too long: at most 3650d",
            "sweep.deadline: too long",
            "sweep.status: must be one of FAILED, CANCELLED",
            "sweep.rules.0.stale_after: must be longer than 0s",
            "sweep.max_clock_skew (from SWEEPER_SWEEP__MAX_CLOCK_SKEW): must be longer than 0s",
        ):
            assert part in error, (command, part)
        assert "organizations" not in error
    assert stand_in.counters.requests == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SWEEPER_SWEEP_STALE_AFTER", "1m"),
        ("SWEEPER_SWEEPER__STALE_AFTER", "1m"),
        ("SWEEPER_SWEEP__ORGANIZATIONS", "[broken"),
        ("SWEEPER_SWEEP__STALE_AFTER", "3000000000d"),
        ("SWEEPER_SCHEDULE__CRON", "0 0 30 2 *"),
    ],
)
def test_a_wrong_variable_alone_exits_78(
    stand_in: Platform, tmp_path: Path, variable: str, value: str
) -> None:
    """Each wrong environment variable alone is enough to refuse, naming the variable."""
    config = write_config(tmp_path, stand_in.base_url)
    result = sweeper("--config", str(config), "run", "--once", env=environment(**{variable: value}))
    assert variable in assert_refused(result.code, result.stderr, result.events)
    assert stand_in.counters.requests == 0


def test_comma_separated_organizations_reach_the_sweep(stand_in: Platform, tmp_path: Path) -> None:
    """SWEEPER_SWEEP__ORGANIZATIONS=org-a,org-b is the list, as check-config shows."""
    config = write_config(tmp_path, stand_in.base_url)
    result = sweeper(
        "--config",
        str(config),
        "check-config",
        env=environment(SWEEPER_SWEEP__ORGANIZATIONS="org-a,org-b"),
    )
    assert result.code == 0, result.stderr
    assert '"organizations": [\n      "org-a",\n      "org-b"\n    ]' in result.stdout


def test_sweep_started_logs_the_thresholds_in_force(stand_in: Platform, tmp_path: Path) -> None:
    """A rule's threshold shows as configured; none reads as `never` unless it is."""
    extra = (
        '[sweep]\nstale_after = "90m"\n'
        '[[sweep.rules]]\nname = "quick"\nmatch = { stepType = ["q"] }\nstale_after = "1s"\n'
        '[[sweep.rules]]\nname = "frozen"\nmatch = { stepType = ["f"] }\nstale_after = "never"\n'
    )
    result = sweeper(
        "--config", str(write_config(tmp_path, stand_in.base_url, extra)), "run", "--once"
    )
    assert result.code == 0, result.stderr
    (started,) = result.named("sweep.started")
    assert started["stale_after"] == "90m"
    assert (started["rules"]["quick"], started["rules"]["frozen"]) == ("1s", "never")


@pytest.mark.parametrize("value", ["s3cr3t-T0KEN-value-xyz", "failed-ish", "--x"])
def test_mark_status_usage_error_does_not_echo_the_value(value: str) -> None:
    """A wrong --status is refused (exit 2) without repeating it, in any case."""
    result = sweeper("mark", "x", "--org", "y", f"--status={value}")
    assert result.code == 2
    assert "--status: must be FAILED or CANCELLED" in result.stderr
    assert value not in result.stderr
    assert value.upper() not in result.stderr


def test_mark_status_accepts_either_case() -> None:
    """`--status cancelled` is CANCELLED (usage is checked before the configuration)."""
    result = sweeper("mark", "x", "--org", "y", "--status", "cancelled")
    assert result.code == 78  # no configuration given: the parse itself succeeded


@pytest.mark.parametrize(
    "args",
    [["--log-format", TOKEN, "check-config"], ["run", "--max-steps", TOKEN]],
)
def test_other_usage_errors_do_not_echo_values(args: list[str]) -> None:
    """argparse's invalid-choice and invalid-value messages are scrubbed too."""
    result = sweeper(*args)
    assert result.code == 2
    assert TOKEN not in result.stderr


PASSWORD = "pw-Zq81-never-shown"


@pytest.mark.parametrize(
    "base_url",
    [
        f"http://alice:{PASSWORD}@127.0.0.1:9",
        f"http://:{PASSWORD}@127.0.0.1:9",
        f"https://{PASSWORD}@platform.example",
        f"http://alice%40corp:{PASSWORD}%3A@127.0.0.1:9/base",
        "http://@127.0.0.1:9",
    ],
)
def test_user_info_in_base_url_is_refused_and_never_echoed(
    stand_in: Platform, tmp_path: Path, base_url: str
) -> None:
    """api.base_url with user info: exit 78 from every command and from the variable, the
    password nowhere in the output, no request sent."""
    (tmp_path / "file").mkdir()
    (tmp_path / "env").mkdir()
    from_file = write_config(tmp_path / "file", base_url)
    plain = write_config(tmp_path / "env", stand_in.base_url)
    from_env = environment(SWEEPER_API__BASE_URL=base_url)
    for config, env in ((from_file, None), (plain, from_env)):
        for command in (["check-config"], ["run", "--once"]):
            result = sweeper("--config", str(config), *command, env=env)
            error = assert_refused(result.code, result.stderr, result.events)
            assert "api.base_url" in error
            assert "must not hold user info" in error
            assert PASSWORD not in result.stdout + result.stderr
    assert stand_in.counters.requests == 0


def test_a_reload_to_user_info_keeps_the_password_out_of_its_error(tmp_path: Path) -> None:
    """The reload path reports load_settings' error: it names the key, never the password."""
    from sweeper.errors import ConfigError
    from sweeper.settings import load_settings

    config = write_config(tmp_path, f"http://alice:{PASSWORD}@127.0.0.1:9")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {}, environment())
    assert "api.base_url: must not hold user info" in str(caught.value)
    assert PASSWORD not in str(caught.value)
