"""The real CLI on a wrong configuration: exit 78, one config.invalid naming every wrong key,
no traceback, and no request to the platform."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e import NOWHERE, Platform, environment, start_sweeper, sweeper, write_config
from tests.fakes import TOKEN, record

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


def test_a_non_ascii_token_is_a_configuration_error(tmp_path: Path) -> None:
    """A token that cannot travel in an HTTP header (`tokén`) is a configuration error:
    check-config and run --once both exit 78, before calling the platform."""
    config = write_config(tmp_path, NOWHERE, token="s3cr3t-tok\u00e9n")
    checked = sweeper("--config", str(config), "check-config")
    ran = sweeper("--config", str(config), "run", "--once")
    assert (checked.code, ran.code) == (78, 78), (checked.code, ran.stderr[-600:])


def test_a_ca_bundle_that_is_not_pem_is_a_configuration_error(tmp_path: Path) -> None:
    """An `api.ca_bundle` that is not PEM is a configuration error: check-config and
    run --once both exit 78."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n", encoding="utf-8")
    config = write_config(tmp_path, NOWHERE, f'ca_bundle = "{bundle}"\n')
    checked = sweeper("--config", str(config), "check-config")
    ran = sweeper("--config", str(config), "run", "--once")
    assert (checked.code, ran.code) == (78, 78), (checked.code, ran.stderr[-600:])


def test_a_deeply_nested_config_file_is_a_configuration_error(tmp_path: Path) -> None:
    """A configuration file nested too deeply for the TOML reader is a configuration
    error: exit 78, no traceback."""
    config = write_config(tmp_path, NOWHERE)
    with config.open("a", encoding="utf-8") as handle:
        handle.write("[sweep]\norganizations = " + "[" * 3000 + "]" * 3000 + "\n")
    done = sweeper("--config", str(config), "check-config")
    assert done.code == 78, (done.code, done.stdout[:300])
    # Neither on stdout (check-config's machine-readable output) nor on stderr.
    assert "Traceback" not in done.stdout + done.stderr


def test_a_tiny_max_rate_never_keeps_a_run_past_its_deadline(
    stand_in: Platform, tmp_path: Path
) -> None:
    """`api.max_rate = 1e-300` never keeps a run past its deadline: run --once ends on its
    own within 20 s of a 2 s sweep.deadline."""
    now = datetime.now(UTC)
    for i in range(3):
        stand_in.state.add(record(f"z{i}", now=now, started=timedelta(hours=5)))
    config = write_config(
        tmp_path, stand_in.base_url, 'max_rate = 1e-300\n[sweep]\ndeadline = "2s"\n'
    )
    proc = start_sweeper("--config", str(config), "run", "--once")
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert code is not None, "run --once did not end within 20 s of a 2 s deadline"


def test_a_base_url_with_an_impossible_port_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    """An `api.base_url` with a port out of range is a configuration error: check-config
    and run --once both exit 78."""
    config = write_config(tmp_path, "http://127.0.0.1:99999")
    checked = sweeper("--config", str(config), "check-config")
    ran = sweeper("--config", str(config), "run", "--once")
    assert (checked.code, ran.code) == (78, 78), (checked.code, ran.stderr[-300:])
