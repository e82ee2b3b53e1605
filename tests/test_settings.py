"""Configuration: precedence, token sources, and one clear message for every wrong input."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from sweeper.errors import ConfigError
from sweeper.model import StepStatus
from sweeper.settings import load_settings
from tests.fakes import TOKEN

BASE = f"""
[api]
base_url = "https://platform.example.test"
token = "{TOKEN}"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def config_error(tmp_path: Path, text: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert TOKEN not in message
    return message


def test_defaults_match_operations_md(tmp_path: Path) -> None:
    """Every documented default holds when the file sets only what is required."""
    settings, warnings = load_settings(write(tmp_path, BASE))
    assert warnings == []
    api, sweep, schedule = settings.api, settings.sweep, settings.schedule
    assert api.timeout == timedelta(seconds=10)
    assert (api.max_concurrency, api.max_rate, api.max_attempts) == (8, 20, 5)
    assert api.max_retry_after == timedelta(seconds=60)
    assert api.allow_insecure_http is False
    assert schedule.interval is None
    assert schedule.cron is None
    assert schedule.effective_interval == timedelta(minutes=5)
    assert (schedule.timezone, schedule.jitter) == ("UTC", timedelta(0))
    assert sweep.stale_after == timedelta(hours=2)
    assert sweep.status == StepStatus.FAILED
    assert sweep.error_code == "ZOMBIE_STEP_TIMEOUT"
    assert (sweep.page_size, sweep.max_steps, sweep.recheck) == (200, 500, True)
    assert sweep.max_clock_skew == timedelta(minutes=2)
    assert sweep.deadline == timedelta(minutes=4)
    assert sweep.organizations == sweep.exclude_organizations == []
    assert sweep.dry_run is False
    assert (settings.log.format, settings.log.level) == ("auto", "info")
    assert settings.server.listen is None


def test_example_config_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    """config.example.toml loads, and names every key of every section."""
    example = Path(__file__).parent.parent / "config.example.toml"
    text = example.read_text(encoding="utf-8")
    token_file = write(tmp_path, TOKEN, "token")
    settings, _ = load_settings(example, {"api": {"token_file": str(token_file)}}, environ={})
    for section, values in settings.model_dump().items():
        for key, value in values.items():
            if key == "rules":
                assert "[[sweep.rules]]" in text
                continue
            if isinstance(value, dict):  # a table of its own, e.g. [leader.etcd]
                assert f"[{section}.{key}]" in text, f"{section}.{key} is not documented"
                for inner in value:
                    assert f"{inner} =" in text, f"{section}.{key}.{inner} is not documented"
                continue
            assert f"{key} =" in text, f"{section}.{key} is not documented"


def test_environment_overrides_file_and_flags_override_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOML < SWEEPER_<SECTION>__<KEY> < flags."""
    path = write(tmp_path, BASE + '[sweep]\nstale_after = "3h"\nmax_steps = 10\npage_size = 50\n')
    monkeypatch.setenv("SWEEPER_SWEEP__STALE_AFTER", "90m")
    monkeypatch.setenv("SWEEPER_SWEEP__MAX_STEPS", "20")
    settings, _ = load_settings(path, {"sweep": {"max_steps": 30}})
    assert settings.sweep.stale_after == timedelta(minutes=90)
    assert settings.sweep.max_steps == 30
    assert settings.sweep.page_size == 50


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SWEEPER_CONFIG names the file when --config is not given."""
    monkeypatch.setenv("SWEEPER_CONFIG", str(write(tmp_path, BASE)))
    settings, _ = load_settings()
    assert settings.api.base_url == "https://platform.example.test"


def test_token_from_file_is_stripped(tmp_path: Path) -> None:
    """api.token_file: the file's content, surrounding whitespace removed."""
    token_file = write(tmp_path, f"\n  {TOKEN}  \n", "token")
    text = f'[api]\nbase_url = "https://p.example.test"\ntoken_file = "{token_file}"\n'
    settings, warnings = load_settings(write(tmp_path, text))
    assert settings.token() == TOKEN
    assert warnings == []


def test_token_from_systemd_credentials(tmp_path: Path) -> None:
    """With neither key set, $CREDENTIALS_DIRECTORY/api-token is read."""
    (tmp_path / "api-token").write_text(TOKEN, encoding="utf-8")
    (tmp_path / "api-token").chmod(0o400)
    text = '[api]\nbase_url = "https://p.example.test"\n'
    settings, _ = load_settings(
        write(tmp_path, text), environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    assert settings.token() == TOKEN


def test_group_readable_files_are_warned_about(tmp_path: Path) -> None:
    """A token file, or a config file holding the token, others can read earns a warning."""
    token_file = write(tmp_path, TOKEN, "token")
    token_file.chmod(0o644)
    config = write(
        tmp_path, f'[api]\nbase_url = "https://p.example.test"\ntoken_file = "{token_file}"\n'
    )
    config.chmod(0o640)
    _, warnings = load_settings(config)
    assert warnings == [f"token file {token_file} is readable by group or others (mode 644)"]
    inline = write(tmp_path, BASE, "inline.toml")
    inline.chmod(0o644)
    _, warnings = load_settings(inline)
    assert len(warnings) == 1
    assert "holds api.token" in warnings[0]
    assert "readable by group or others" in warnings[0]


def test_world_readable_config_without_secrets_is_not_warned_about(tmp_path: Path) -> None:
    """A 0644 configuration that holds no token (systemd, Kubernetes ConfigMap) is fine."""
    token_file = write(tmp_path, TOKEN, "token")
    config = write(
        tmp_path, f'[api]\nbase_url = "https://p.example.test"\ntoken_file = "{token_file}"\n'
    )
    config.chmod(0o644)
    _, warnings = load_settings(config)
    assert warnings == []


def test_rules_inherit_from_sweep(tmp_path: Path) -> None:
    """Keys a rule leaves out come from [sweep]; `never` exempts."""
    text = (
        BASE
        + """
[sweep]
stale_after = "1h"
error_code = "Z"

[[sweep.rules]]
name = "cancelled"
match = { workflowRunStatus = ["CANCELLED"] }
status = "CANCELLED"

[[sweep.rules]]
name = "frozen"
match = { stepType = ["manual-*", "approval"] }
stale_after = "never"
"""
    )
    settings, _ = load_settings(write(tmp_path, text))
    rules = settings.sweep.build_rules()
    cancelled, frozen = rules.overrides
    assert (cancelled.stale_after, cancelled.status, cancelled.error_code) == (
        timedelta(hours=1),
        StepStatus.CANCELLED,
        "Z",
    )
    assert frozen.stale_after is None
    assert frozen.match == {"stepType": ("manual-*", "approval")}


def test_check_config_view_redacts_the_token(tmp_path: Path) -> None:
    """The printable settings show durations as written and never the token."""
    settings, _ = load_settings(write(tmp_path, BASE))
    shown = json.dumps(settings.redacted())
    assert TOKEN not in shown
    assert '"stale_after": "2h"' in shown


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[api]\nbogus = 1\n", "api.bogus: unknown key"),
        ("[nonsense]\nx = 1\n", "nonsense: unknown key"),
        ('[sweep]\nstale_after = "soon"\n', "sweep.stale_after: not a duration"),
        ('[sweep]\nstale_after = "-5m"\n', "sweep.stale_after: not a duration"),
        (
            '[sweep]\nerror_code = "' + "X" * 65 + '"\n',
            "sweep.error_code: String should have at most 64",
        ),
        ('[sweep]\nstatus = "SUCCEEDED"\n', "sweep.status"),
        ("[sweep]\npage_size = 5000\n", "sweep.page_size"),
        ('[sweep]\nerror_message = "{oops}"\n', "sweep.error_message: bad placeholder"),
        (
            '[schedule]\ninterval = "5m"\ncron = "*/5 * * * *"\n',
            "schedule.interval, schedule.cron: set at most one",
        ),
        ('[schedule]\ncron = "every day"\n', "schedule.cron: not a five-field cron"),
        ('[schedule]\ntimezone = "Mars/Base"\n', "schedule.timezone: not a known time zone"),
        ('[log]\nformat = "xml"\n', "log.format"),
        ('[server]\nlisten = "nowhere"\n', "server.listen: must be host:port"),
        ('[server]\nlisten = "::1:9108"\n', "server.listen: an IPv6 address goes in brackets"),
        ('[server]\nlisten = "[::1:9108"\n', "server.listen: an IPv6 address goes in brackets"),
        ('[server]\nlisten = "::1]:9108"\n', "server.listen: an IPv6 address goes in brackets"),
        ('[server]\nlisten = "[host]:9108"\n', "server.listen: an IPv6 address goes in brackets"),
        ('[server]\nlisten = "[10.0.0.1]:9108"\n', "server.listen: an IPv6 address goes in"),
        ('[server]\nlisten = "[::1]:"\n', "server.listen: must be host:port"),
        # A host no server could bind: refused here, not a restart loop at start.
        ('[server]\nlisten = " :9108"\n', "server.listen: not a host name or address"),
        ('[server]\nlisten = "*:9108"\n', "server.listen: not a host name or address"),
        ('[server]\nlisten = "my host:9108"\n', "server.listen: not a host name or address"),
        ('[server]\nlisten = "-lo:9108"\n', "server.listen: not a host name or address"),
        ('[server]\nlisten = "a..b:9108"\n', "server.listen: not a host name or address"),
        # Requests spaced wider than a sixteenth of the smallest limit: outage grace
        # could not watch, every interval would be forgiven (issue 15, E).
        (
            '[api]\nmax_rate = 1\n[sweep]\nstale_after = "10s"\n',
            "api.max_rate: 1 per second spaces requests wider than a sixteenth of the"
            " smallest stale_after (10s)",
        ),
        (
            '[api]\nmax_rate = 15\n[sweep]\nstale_after = "1h"\n[[sweep.rules]]\nname = "r"\n'
            'stale_after = "1s"\n',
            "set it to at least 16, or 0",
        ),
        # A name that does not resolve, an address not this machine's: exit 75 at every
        # start (a restart loop), so refused here (resolved and bound on port 0 only).
        ('[server]\nlisten = "no-such-host.invalid:9108"\n', "does not resolve on this host"),
        ('[server]\nlisten = "192.0.2.1:9108"\n', "server.listen: cannot listen on"),
        ('[server]\nlisten = "[2001:db8::1]:9108"\n', "server.listen: cannot listen on"),
        ('[[sweep.rules]]\nname = "r"\nmatch = { colour = ["red"] }\n', "sweep.rules.0.match"),
        ('[[sweep.rules]]\nname = "default"\n', "sweep.rules: rule names must be unique"),
        ('[[sweep.rules]]\nstatus = "FAILED"\n', "sweep.rules.0.name: required"),
    ],
)
def test_every_wrong_key_is_named(tmp_path: Path, extra: str, expected: str) -> None:
    """Each invalid setting is reported with its dotted key and a reason."""
    # Appending a second [api] table is invalid TOML, so api tests go first.
    text = extra + BASE if extra.startswith("[api]") else BASE + extra
    if extra.startswith("[api]"):
        text = extra.replace("[api]\n", BASE.strip() + "\n")
    assert expected in config_error(tmp_path, text)


def test_all_errors_are_reported_in_one_message(tmp_path: Path) -> None:
    """Several wrong keys come back together, not one per run."""
    message = config_error(
        tmp_path, BASE + '[sweep]\nstale_after = "x"\npage_size = 0\n[log]\nlevel = "loud"\n'
    )
    assert "sweep.stale_after" in message
    assert "sweep.page_size" in message
    assert "log.level" in message


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        ('base_url = "https://p.example.test"\n', "api.token: required"),
        (
            f'base_url = "https://p.example.test"\ntoken = "{TOKEN}"\ntoken_file = "/x"\n',
            "set exactly one",
        ),
        (
            'base_url = "https://p.example.test"\ntoken_file = "/nonexistent/token"\n',
            "api.token_file: /nonexistent/token cannot be read",
        ),
        ('base_url = "https://p.example.test"\ntoken = "  "\n', "api.token: the token is empty"),
        (
            f'base_url = "http://platform.example.test"\ntoken = "{TOKEN}"\n',
            "api.base_url: plain http:// is refused",
        ),
        (
            f'base_url = "ftp://p.example.test"\ntoken = "{TOKEN}"\n',
            "api.base_url: must be http(s)",
        ),
        (f'token = "{TOKEN}"\n', "api.base_url: required"),
        (
            f'base_url = "https://p.example.test"\ntoken = "{TOKEN}"\n'
            'ca_bundle = "/nonexistent.pem"\n',
            "api.ca_bundle",
        ),
    ],
)
def test_api_errors(tmp_path: Path, api: str, expected: str) -> None:
    """Token and URL problems name the key and never show the token."""
    assert expected in config_error(tmp_path, "[api]\n" + api)


def test_missing_section_api(tmp_path: Path) -> None:
    """A file without [api] says api is required."""
    assert "api: required" in config_error(tmp_path, "[sweep]\nmax_steps = 3\n")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.8.9.10"])
def test_plain_http_is_allowed_to_loopback(tmp_path: Path, host: str) -> None:
    """http:// to a loopback host needs no opt-in."""
    text = f'[api]\nbase_url = "http://{host}:8700"\ntoken = "{TOKEN}"\n'
    settings, _ = load_settings(write(tmp_path, text))
    assert settings.api.base_url.startswith("http://")


def test_plain_http_elsewhere_needs_the_opt_in(tmp_path: Path) -> None:
    """api.allow_insecure_http = true lets http:// reach another host."""
    text = (
        f'[api]\nbase_url = "http://p.example.test"\ntoken = "{TOKEN}"\n'
        "allow_insecure_http = true\n"
    )
    settings, _ = load_settings(write(tmp_path, text))
    assert settings.api.allow_insecure_http


def test_missing_config_file(tmp_path: Path) -> None:
    """--config naming a file that does not exist is a config error naming --config."""
    with pytest.raises(ConfigError, match=r"--config: .* does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_unparseable_toml(tmp_path: Path) -> None:
    """A broken TOML file is a config error with the parser's reason."""
    assert "is not valid TOML" in config_error(tmp_path, "[api\nbase_url = 1\n")


def test_bad_environment_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong environment variable is reported by its key."""
    monkeypatch.setenv("SWEEPER_SWEEP__MAX_STEPS", "lots")
    assert "sweep.max_steps" in config_error(tmp_path, BASE)


def test_token_in_environment_is_not_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when the token is set beside another error, the message does not show it."""
    monkeypatch.setenv("SWEEPER_API__TOKEN", TOKEN)
    message = config_error(tmp_path, '[api]\nbase_url = "ftp://x"\n[sweep]\nstale_after = "x"\n')
    assert "api.base_url" in message


def test_token_path_is_remembered_for_rotation(tmp_path: Path) -> None:
    """A token from a file remembers its path; an inline token has none."""
    token_file = write(tmp_path, TOKEN, "token")
    text = f'[api]\nbase_url = "https://p.example.test"\ntoken_file = "{token_file}"\n'
    from_file, _ = load_settings(write(tmp_path, text))
    assert from_file.token_path == token_file
    inline, _ = load_settings(write(tmp_path, BASE))
    assert inline.token_path is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", "the token is empty"), ("two words", "whitespace or control characters")],
)
def test_unusable_token_file(tmp_path: Path, content: str, expected: str) -> None:
    """A token file that is empty or holds spaces inside is refused."""
    token_file = write(tmp_path, content, "token")
    text = f'[api]\nbase_url = "https://p.example.test"\ntoken_file = "{token_file}"\n'
    assert expected in config_error(tmp_path, text)
