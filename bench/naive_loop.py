"""What a user would write instead: one httpx client, one request at a time.

List every page, then re-read and PATCH each zombie in turn. Prints one JSON
line: {"seconds": ..., "marked": ...}.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx

STEPS = "/api/data-platform/workflow-run-steps"


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def main(base_url: str, token: str, stale: float) -> None:
    started = time.perf_counter()
    cutoff = stamp(datetime.now(UTC) - timedelta(seconds=stale))
    marked = 0
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        steps, cursor = [], None
        while True:
            params = {"status": "RUNNING", "startedBefore": cutoff, "limit": "200"}
            if cursor:
                params["cursor"] = cursor
            page = http.get(STEPS, params=params).json()
            steps += page["data"]
            cursor = page["nextCursor"]
            if not cursor:
                break
        for step in steps:
            last = max(step.get(k) or "" for k in ("startedAt", "updatedAt", "lastHeartbeatAt"))
            if last >= cutoff:
                continue
            path = f"{STEPS}/{quote(step['stepId'], safe='')}"
            current = http.get(path, params={"organizationId": step["organizationId"]}).json()
            if current["data"]["status"] != "RUNNING":
                continue
            body = {
                "organizationId": step["organizationId"],
                "status": "FAILED",
                "completedAt": stamp(datetime.now(UTC)),
                "errorCode": "ZOMBIE_STEP_TIMEOUT",
                "errorMessage": "No sign of life from this step.",
                "errorDetails": {"sweepId": "naive"},
            }
            marked += http.patch(path, json=body).json()["success"]
    print(json.dumps({"seconds": time.perf_counter() - started, "marked": marked}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("--token", default="dev-token")
    parser.add_argument("--stale-after", type=float, default=7200)
    args = parser.parse_args()
    main(args.base_url, args.token, args.stale_after)
