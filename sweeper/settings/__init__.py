"""Configuration: TOML file under environment variables under flags, validated once.

`load_settings` is the only way in; it raises ConfigError with one message that
names every wrong key and never echoes a value (the token could be one).

One job a module: `models` (the sections and their checks), `values` (the kinds of
value a key holds), `templates` (the message-template rule, `sweeper mark` uses it
too), `rules` (building the policy's `Rules`), `load` (merging file, environment and
flags, the checks across sections, the token), `problems` (rendering what is wrong),
`hosts` (host and address checks). The names other modules use are here.
"""

from sweeper.settings.load import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    check_watch_rate,
    config_path_of,
    load_settings,
)
from sweeper.settings.models import (
    MIN_RATE,
    REDACTED,
    ApiSettings,
    LogSettings,
    RuleSettings,
    ScheduleSettings,
    ServerSettings,
    Settings,
    SweepSettings,
)
from sweeper.settings.problems import KeyProblem
from sweeper.settings.templates import check_template

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "MIN_RATE",
    "REDACTED",
    "ApiSettings",
    "KeyProblem",
    "LogSettings",
    "RuleSettings",
    "ScheduleSettings",
    "ServerSettings",
    "Settings",
    "SweepSettings",
    "check_template",
    "check_watch_rate",
    "config_path_of",
    "load_settings",
]
