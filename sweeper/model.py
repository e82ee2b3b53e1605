"""Wire shapes of the platform (validated at the HTTP edge) and the plain values used inside."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, StrictStr


class StepStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"


#: What a sweep may make of a step: the only statuses the configuration and `mark` accept.
FINAL_STATUSES = (StepStatus.FAILED, StepStatus.CANCELLED)
#: The PATCH body's errorCode is at most this long (patch-step-body.schema.json).
ERROR_CODE_MAX_LENGTH = 64


#: Step fields a rule may match on, by their wire name.
MATCHABLE_FIELDS = (
    "stepId",
    "organizationId",
    "status",
    "workflowRunId",
    "stepType",
    "workflowRunStatus",
)


@dataclass(frozen=True, slots=True)
class Step:
    """One workflow run step as the platform reported it."""

    step_id: str
    organization_id: str
    status: str
    started_at: datetime
    workflow_run_id: str | None = None
    step_type: str | None = None
    updated_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    retry_count: int | None = None
    workflow_run_status: str | None = None
    #: `errorDetails.sweepId` when the step carries one: how a sweep knows its own write.
    marked_by_sweep: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """Identity: the same stepId in two organizations is two steps."""
        return (self.organization_id, self.step_id)

    def field(self, wire_name: str) -> str | None:
        """The value of a matchable field, by its wire name; None when the step lacks it."""
        value: str | None = getattr(self, _ATTRIBUTE_OF[wire_name])
        return value

    @property
    def last_sign_of_life(self) -> tuple[str, datetime]:
        """The latest of startedAt, updatedAt and lastHeartbeatAt, with its field name."""
        best = ("startedAt", self.started_at)
        for name, moment in (
            ("updatedAt", self.updated_at),
            ("lastHeartbeatAt", self.last_heartbeat_at),
        ):
            if moment is not None and moment > best[1]:
                best = (name, moment)
        return best


_ATTRIBUTE_OF = {
    "stepId": "step_id",
    "organizationId": "organization_id",
    "status": "status",
    "workflowRunId": "workflow_run_id",
    "stepType": "step_type",
    "workflowRunStatus": "workflow_run_status",
}

_NonEmpty = Annotated[StrictStr, Field(min_length=1)]


class WireStep(BaseModel):
    """A step record as the read side sends it; unknown extra fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    stepId: _NonEmpty
    organizationId: _NonEmpty
    status: _NonEmpty
    startedAt: AwareDatetime
    workflowRunId: StrictStr | None = None
    stepType: StrictStr | None = None
    updatedAt: AwareDatetime | None = None
    lastHeartbeatAt: AwareDatetime | None = None
    retryCount: Annotated[StrictInt, Field(ge=0)] | None = None
    workflowRunStatus: StrictStr | None = None
    errorDetails: Any = None

    def to_step(self) -> Step:
        details = self.errorDetails
        sweep_id = details.get("sweepId") if isinstance(details, dict) else None
        return Step(
            step_id=self.stepId,
            organization_id=self.organizationId,
            status=self.status,
            started_at=self.startedAt.astimezone(UTC),
            workflow_run_id=self.workflowRunId,
            step_type=self.stepType,
            updated_at=_utc(self.updatedAt),
            last_heartbeat_at=_utc(self.lastHeartbeatAt),
            retry_count=self.retryCount,
            workflow_run_status=self.workflowRunStatus,
            marked_by_sweep=sweep_id if isinstance(sweep_id, str) else None,
        )


def parse_step(record: Any) -> Step:
    """Validate one wire record; raises pydantic.ValidationError when it breaks the contract."""
    return WireStep.model_validate(record).to_step()


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def format_timestamp(moment: datetime) -> str:
    """UTC with milliseconds and a literal Z, as the PATCH body's completedAt pattern wants."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
