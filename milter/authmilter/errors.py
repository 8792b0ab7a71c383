"""The root of every exception authmilter raises on purpose."""


class AuthmilterError(Exception):
    """Base class: anything the sender or network controls becomes a result, not one of these."""


class ConfigError(AuthmilterError):
    """A configuration file that cannot be used; the message names file, section, key and reason."""
