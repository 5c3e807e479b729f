"""Test-wide settings: hypothesis runs a fixed sequence of examples under CI.

CI (`CI=true`, as .ci/run is run) derandomizes hypothesis so that a green run on a developer's
machine is the same run in CI; a developer's `make test` keeps drawing new examples, and
`EVSITE_PROPERTY_SCALE=10` (tests/core/test_properties.py) is the soak.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")
