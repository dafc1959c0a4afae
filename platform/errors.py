"""The error every user-facing config or input problem raises.

Its own module so that platform/config.py (loading) and platform/rules.py (what values are
allowed) can both raise it without importing each other; `from worldclip.platform.config
import ConfigError` keeps working.
"""


class ConfigError(ValueError):
    """A config value a user must change; the message names key, value and fix."""
