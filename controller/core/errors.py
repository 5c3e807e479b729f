"""Core layer: the one exception tree of evsite.

Retryable errors (a device did not answer) are worth another try later; permanent ones
(misconfigured, unsupported) are not. Library exceptions never escape their adapter: each
adapter converts them to one of these.
"""


class EvsiteError(Exception):
    """Root of every error evsite raises on purpose."""


class RetryableError(EvsiteError):
    """The operation may succeed if tried again later (device unavailable, timeout)."""


class PermanentError(EvsiteError):
    """Trying again will not help (misconfigured, unsupported by the device)."""


class DeviceUnavailable(RetryableError):
    """A device did not answer, answered garbage, or its link is down."""


class DeviceError(PermanentError):
    """A device answered, but refused the request (Modbus exception, unsupported register)."""


class ConfigError(PermanentError):
    """The site configuration is invalid; carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
