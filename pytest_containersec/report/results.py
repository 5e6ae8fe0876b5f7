"""One outcome of one check on one runtime: what reports, SARIF and exit codes are made of."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

# One result of a test or a policy expectation on one runtime.
Outcome = Literal["passed", "failed", "skipped", "error"]


@dataclass(frozen=True)
class CheckResult:
    """One check or test on one runtime, with where it is declared (file and line) for SARIF."""

    name: str  # test id or policy expectation
    family: str  # check family ("capabilities", "seccomp", ...) or "test"
    runtime: str
    outcome: Outcome
    message: str = ""
    path: str = ""  # the test or policy file
    line: int | None = None
    observed: str = ""  # what the failed check saw (matrix cells), when known

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON-able data."""
        return asdict(self)
