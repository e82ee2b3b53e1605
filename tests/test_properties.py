"""Properties of the decision and the wire formats, checked over generated inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.api import STEPS_PATH, step_url
from sweeper.devserver.state import COMPLETED_AT_PATTERN
from sweeper.model import Step, StepStatus, format_timestamp
from sweeper.policy import DEFAULT_ERROR_MESSAGE, Decision, Rule, Rules, Spared, decide

NOW = datetime(2026, 5, 23, 12, tzinfo=UTC)
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))
optional_ago = st.none() | durations
limits = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=3))
step_types = st.sampled_from(["extract", "load", "notify", None])


@st.composite
def steps(draw: st.DrawFn) -> Step:
    started = draw(durations)
    updated = draw(optional_ago)
    beat = draw(optional_ago)
    return Step(
        step_id=draw(st.text(min_size=1, max_size=8)),
        organization_id="org",
        status="RUNNING",
        started_at=NOW - started,
        updated_at=None if updated is None else NOW - updated,
        last_heartbeat_at=None if beat is None else NOW - beat,
        step_type=draw(step_types),
    )


@st.composite
def rule_sets(draw: st.DrawFn) -> Rules:
    overrides = tuple(
        Rule(
            name=f"r{i}",
            stale_after=draw(st.none() | limits),
            status=StepStatus.CANCELLED,
            error_code=f"R{i}",
            error_message=DEFAULT_ERROR_MESSAGE,
            match={
                "stepType": tuple(
                    draw(
                        st.lists(st.sampled_from(["extract", "load*", "*"]), min_size=1, max_size=2)
                    )
                )
            },
        )
        for i in range(draw(st.integers(0, 3)))
    )
    default = Rule("default", draw(limits), StepStatus.FAILED, "Z", DEFAULT_ERROR_MESSAGE)
    return Rules(overrides, default)


@given(steps(), rule_sets())
def test_never_marks_a_step_within_its_rules_limit(step: Step, rules: Rules) -> None:
    """A decision exists only when idle time exceeds the deciding rule's stale_after."""
    verdict = decide(step, NOW, rules)
    rule = rules.rule_for(step)
    idle = NOW - step.last_sign_of_life[1]
    if isinstance(verdict, Decision):
        assert rule.stale_after is not None
        assert idle > rule.stale_after
        assert verdict.rule == rule.name
    elif rule.stale_after is None:
        assert verdict is Spared.EXEMPT
    else:
        assert verdict is Spared.NOT_STALE
        assert idle <= rule.stale_after


@given(steps(), rule_sets())
def test_rules_apply_in_order(step: Step, rules: Rules) -> None:
    """The deciding rule is the first that fits; no earlier rule fits."""
    chosen = rules.rule_for(step)
    position = [*rules.overrides, rules.default].index(chosen)
    assert not any(r.fits(step) for r in rules.overrides[:position])
    if chosen is not rules.default:
        assert chosen.fits(step)


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.timezones()
    )
)
def test_every_completed_at_matches_the_seed_pattern(moment: datetime) -> None:
    """format_timestamp of any aware moment is UTC, milliseconds, Z, calendar-valid."""
    try:
        text = format_timestamp(moment)
    except OverflowError:
        return  # beyond year 9999 once moved to UTC: not a moment the sweeper meets
    assert COMPLETED_AT_PATTERN.match(text), text
    # Compared in UTC: PEP 495 makes ambiguous local times unequal across zones.
    expected = moment.astimezone(UTC).replace(microsecond=moment.microsecond // 1000 * 1000)
    assert datetime.fromisoformat(text.replace("Z", "+00:00")) == expected


@settings(max_examples=300)
@given(st.text(min_size=1))
def test_any_step_id_travels_as_exactly_one_path_segment(step_id: str) -> None:
    """Whatever the id holds, the URL has one more segment, which decodes back to it."""
    path = step_url(step_id)
    url = httpx.URL("https://platform.test" + path)
    raw = url.raw_path.decode("ascii")
    assert raw.startswith(STEPS_PATH + "/")
    segment = raw.removeprefix(STEPS_PATH + "/")
    assert "/" not in segment and "?" not in segment and "#" not in segment
    assert segment not in (".", "..")
    assert unquote(segment, errors="surrogatepass") == step_id
