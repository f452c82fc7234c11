"""What a stored explanation or score is. One enum for every stage, the store, the report and the web UI.

- `ok`: a result, scored and compared;
- `degraded`: the explainer or scorer finished without something it needed (an LLM step that failed, logprobs
  missing for some windows); kept for reading with its reason, never scored or compared, retried by the next run;
- `failed`: no result, only its reason; retried by the next run.

Members are strings (`Status.OK == "ok"`), so rows read back from SQLite compare with them directly."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"

    @property
    def worth(self) -> int:
        """A stored row is replaced only by one at least as good: failed < degraded < ok."""
        return _WORTH[self]


_WORTH = {Status.FAILED: 0, Status.DEGRADED: 1, Status.OK: 2}
