"""CLI layer: what every `evsite` subcommand prints for a service's answer, and its exit codes.

Exit status, the same for every command that talks to the service: 0 done, 1 refused (or
failed), 2 bad command line, 3 no service.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NO_SERVICE = 3


def print_json(answer: Mapping[str, Any], out: TextIO) -> None:
    out.write(json.dumps(answer, indent=2) + "\n")


def refused(
    answer: Mapping[str, Any],
    *,
    as_json: bool,
    out: TextIO,
    options: Mapping[str, str],
    verb: str = "refused",
) -> int:
    """A refusal: the answer as JSON when asked, and on stderr the reason, naming the command
    line option (``options``: payload field -> option) that was at fault."""
    if as_json:
        print_json(answer, out)
    field = answer.get("field")
    option = options.get(field, field) if isinstance(field, str) else None
    where = f" ({option})" if option else ""
    print(f"evsite: {verb}{where}: {answer.get('error', 'no reason given')}", file=sys.stderr)
    return EXIT_REFUSED
