"""Numbers from environment variables, for the services' ``load_config`` (gateway, invoker).

One parser and one wording for every service: an unset or empty variable is its default,
anything else must parse and be at least the minimum, else ``ConfigError`` names the variable.
(The agent, shipped alone in runtime images, keeps its own stdlib-only helpers.)
"""

from __future__ import annotations

from collections.abc import Mapping


class ConfigError(ValueError):
    """An environment variable holds something unusable."""


def env_number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {raw}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    """Also a whole number written as a float: Helm renders large numbers as ``1e+06``."""
    value = env_number(env, name, default, minimum)
    # float(): the default is an int. is_integer() is also False for inf and nan (int() raises).
    if not float(value).is_integer():
        raise ConfigError(f"{name} must be an integer, got {env.get(name)!r}")
    return int(value)
