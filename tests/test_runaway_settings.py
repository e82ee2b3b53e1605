"""Runaway keys of the configuration: defaults, rule inheritance, and what is refused."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from sweeper.errors import ConfigError
from sweeper.model import StepStatus
from sweeper.policy import DEFAULT_RUNAWAY_ERROR_CODE, DEFAULT_RUNAWAY_MESSAGE
from sweeper.settings import load_settings
from tests.fakes import TOKEN

BASE = f"""
[api]
base_url = "https://platform.example.test"
token = "{TOKEN}"
"""
H = timedelta(hours=1)


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> object:
    path = tmp_path / "config.toml"
    path.write_text(BASE + text, encoding="utf-8")
    path.chmod(0o600)
    settings, _ = load_settings(path, environ=environ or {})
    return settings


def error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ)
    message = str(caught.value)
    assert TOKEN not in message
    return message


def test_never_is_the_default_and_builds_rules_without_runaways(tmp_path: Path) -> None:
    """max_runtime = never by default: no rule has one, the listing filter is unchanged."""
    settings = load(tmp_path, "")
    sweep = settings.sweep  # type: ignore[attr-defined]
    assert sweep.max_runtime is None
    assert sweep.runaway_status == StepStatus.CANCELLED
    assert sweep.runaway_error_code == DEFAULT_RUNAWAY_ERROR_CODE
    assert sweep.runaway_message == DEFAULT_RUNAWAY_MESSAGE
    rules = sweep.build_rules()
    assert not rules.any_max_runtime
    assert rules.smallest_limit == rules.smallest_stale_after == 2 * H
    assert settings.redacted()["sweep"]["max_runtime"] == "never"  # type: ignore[attr-defined]


def test_rules_inherit_or_override_the_runaway_keys(tmp_path: Path) -> None:
    """A rule inherits max_runtime and the runaway_* keys, or sets its own (never too)."""
    settings = load(
        tmp_path,
        """
[sweep]
max_runtime = "1d"
runaway_status = "FAILED"
[[sweep.rules]]
name = "inherits"
match = { stepType = ["a"] }
[[sweep.rules]]
name = "own"
match = { stepType = ["b"] }
stale_after = "never"
max_runtime = "6h"
runaway_status = "CANCELLED"
runaway_error_code = "BATCH_TOO_LONG"
runaway_message = "{rule}: {runtime} > {max_runtime} ({status})"
[[sweep.rules]]
name = "off"
match = { stepType = ["c"] }
max_runtime = "never"
""",
    )
    rules = settings.sweep.build_rules()  # type: ignore[attr-defined]
    inherits, own, off = rules.overrides
    assert inherits.max_runtime == 24 * H
    assert inherits.runaway_status is StepStatus.FAILED
    assert (own.max_runtime, own.runaway_status) == (6 * H, StepStatus.CANCELLED)
    assert own.runaway_error_code == "BATCH_TOO_LONG"
    assert own.runaway_message.startswith("{rule}")
    assert off.max_runtime is None
    assert rules.default.max_runtime == 24 * H
    assert rules.smallest_limit == 2 * H  # the default's stale_after


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ('[sweep]\nmax_runtime = "1h"\n', "sweep.max_runtime, sweep.stale_after"),
        (
            '[sweep]\nmax_runtime = "3h"\n[[sweep.rules]]\nname = "r"\nstale_after = "4h"\n',
            "sweep.max_runtime, sweep.rules.0.stale_after",
        ),
        (
            '[[sweep.rules]]\nname = "r"\nmax_runtime = "1h"\n',
            "sweep.rules.0.max_runtime, sweep.stale_after",
        ),
        (
            '[[sweep.rules]]\nname = "r"\nstale_after = "3h"\nmax_runtime = "150m"\n',
            "sweep.rules.0.max_runtime, sweep.rules.0.stale_after",
        ),
    ],
)
def test_max_runtime_shorter_than_stale_after_is_refused_naming_both(
    tmp_path: Path, text: str, keys: str
) -> None:
    """Every live step that outlives a short max_runtime would be marked: refused."""
    message = error(tmp_path, text)
    assert keys in message
    assert "max_runtime must not be shorter than stale_after" in message


def test_equal_limits_and_a_never_stale_rule_are_accepted(tmp_path: Path) -> None:
    """max_runtime equal to stale_after, or under a rule that never goes stale, is fine."""
    settings = load(
        tmp_path,
        '[sweep]\nmax_runtime = "2h"\n[[sweep.rules]]\nname = "r"\nstale_after = "never"\n'
        'max_runtime = "10m"\n',
    )
    rules = settings.sweep.build_rules()  # type: ignore[attr-defined]
    assert rules.smallest_limit == timedelta(minutes=10)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[sweep]\nmax_runtime = "0s"\n', "sweep.max_runtime: must be longer than 0s"),
        ('[sweep]\nmax_runtime = "soon"\n', "sweep.max_runtime: not a duration"),
        ('[sweep]\nmax_runtime = "3651d"\n', "sweep.max_runtime: too long"),
        ('[sweep]\nrunaway_status = "SUCCEEDED"\n', "sweep.runaway_status: must be one of"),
        (f'[sweep]\nrunaway_error_code = "{"X" * 65}"\n', "sweep.runaway_error_code"),
        ('[sweep]\nrunaway_message = "{idle}"\n', "sweep.runaway_message: bad placeholder"),
        (
            '[[sweep.rules]]\nname = "r"\nrunaway_message = "{runtime:>99}"\n',
            "sweep.rules.0.runaway_message: bad placeholder",
        ),
        ('[[sweep.rules]]\nname = "r"\nmax_runtime = "x"\n', "sweep.rules.0.max_runtime"),
    ],
)
def test_wrong_runaway_keys_are_named(tmp_path: Path, text: str, expected: str) -> None:
    """Each wrong runaway key is named with its reason; exit 78 comes from ConfigError."""
    assert expected in error(tmp_path, text)


def test_the_runaway_message_placeholders_are_its_own(tmp_path: Path) -> None:
    """runaway_message takes {runtime}, {max_runtime}, {status}, {rule}; error_message does not."""
    load(tmp_path, '[sweep]\nrunaway_message = "{runtime} {max_runtime} {status} {rule}"\n')
    assert "sweep.error_message: bad placeholder" in error(
        tmp_path, '[sweep]\nerror_message = "{runtime}"\n'
    )


def test_max_runtime_from_the_environment(tmp_path: Path) -> None:
    """SWEEPER_SWEEP__MAX_RUNTIME sets it, and is checked against stale_after too."""
    settings = load(tmp_path, "", {"SWEEPER_SWEEP__MAX_RUNTIME": "1d"})
    assert settings.sweep.max_runtime == 24 * H  # type: ignore[attr-defined]
    message = error(tmp_path, "", {"SWEEPER_SWEEP__MAX_RUNTIME": "30m"})
    assert "sweep.max_runtime, sweep.stale_after" in message


def test_the_documented_example_rules_load(tmp_path: Path) -> None:
    """docs/runaway-steps.md's example configuration is valid as written."""
    import re

    doc = Path(__file__).parent.parent / "docs" / "runaway-steps.md"
    match = re.search(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert match is not None
    rules = load(tmp_path, match.group(1)).sweep.build_rules()  # type: ignore[attr-defined]
    assert [r.name for r in rules.overrides] == ["extract", "transform", "load", "notify"]
    assert rules.smallest_limit == timedelta(minutes=15)
