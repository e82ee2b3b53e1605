"""Figures of runaway detection (issue 18), printed, never asserted.

    python bench/runaway.py [--steps 10000] [--seconds 60] [--seed 18] [--only listing|precise]

listing: requests per listing. A fleet of healthy RUNNING steps (heartbeat within
the last minute, startedAt spread over the last 12 hours; a quarter of them of type
`batch`, started within the last 20 minutes) on the stand-in (in-process, loopback);
the real CLI runs `run --once --dry-run` once per configuration, and the platform counts the listing
requests it answered (page_size 200). A step past a limit would be re-read too: a
healthy fleet has none, so every request counted is a listing page.

The sweeper lists once per sweep, with `startedBefore` = now minus the smallest
`stale_after` or `max_runtime` of any rule. `startedBefore` sets are nested, so a
second query per distinct `max_runtime` would only re-read a subset of the first;
the row "second query per max_runtime" shows what that would have cost.

precise: the real daemon in precise mode against a living platform: about 150 steps
heartbeating every second, a third of them wedged (they beat on for ever), the
others finishing before their max_runtime. `stale_after = 6s`, `max_runtime = 20s`,
`interval = 5s`. Detection lag of each runaway (its PATCH arriving minus startedAt +
20 s): p50 / p99 / max, target p99 <= 1.0 s; wrong marks (a PATCH to a step younger
than 20 s, or that had finished) and missed runaways must be 0.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sweeper.api import STEPS_PATH  # noqa: E402
from sweeper.model import format_timestamp  # noqa: E402

PY = sys.executable
TOKEN = "bench-token"

#: name, [sweep] keys, extra rules
CONFIGS: list[tuple[str, str, str]] = [
    ("no max_runtime (stale_after 2h)", "", ""),
    ("max_runtime 1d on [sweep]", 'max_runtime = "1d"\n', ""),
    (
        "batch: stale_after never, max_runtime 6h",
        'max_runtime = "1d"\n',
        '[[sweep.rules]]\nname = "batch"\nmatch = { stepType = ["batch"] }\n'
        'stale_after = "never"\nmax_runtime = "6h"\n',
    ),
    (
        "batch: stale_after never, max_runtime 30m",
        "",
        '[[sweep.rules]]\nname = "batch"\nmatch = { stepType = ["batch"] }\n'
        'stale_after = "never"\nmax_runtime = "30m"\n',
    ),
    (
        "no heartbeat rule: stale_after 1d, max_runtime 1d",
        'stale_after = "1d"\nmax_runtime = "1d"\n',
        "",
    ),
]


def fleet(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        # batch steps are short (under 20 minutes), the others run up to 12 hours
        span = timedelta(minutes=20) if i % 4 == 0 else timedelta(hours=12)
        started = now - span * rng.random()
        out.append(
            {
                "stepId": f"h{i:05d}",
                "organizationId": "org-bench",
                "status": "RUNNING",
                "stepType": "batch" if i % 4 == 0 else "etl",
                "startedAt": format_timestamp(started),
                "lastHeartbeatAt": format_timestamp(now - timedelta(seconds=rng.uniform(0, 60))),
            }
        )
    return out


def listing(steps: int, seed: int) -> None:
    from starlette.requests import Request
    from starlette.responses import Response

    from sweeper.devserver.server import serve_in_thread
    from sweeper.devserver.state import PlatformState

    state = PlatformState()
    for record in fleet(steps, seed):
        state.add(record)
    counted = {"list": 0, "other": 0}

    async def count(request: Request) -> Response | None:
        counted["list" if request.url.path == STEPS_PATH else "other"] += 1
        return None

    print(f"\n== requests per listing, {steps} healthy RUNNING steps, page_size 200")
    with (
        serve_in_thread(state, TOKEN, intercept=count) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        rows = []
        for name, sweep_keys, rules in CONFIGS:
            config = Path(tmp) / "config.toml"
            config.write_text(
                f'[api]\nbase_url = "{server.base_url}"\ntoken = "{TOKEN}"\nmax_rate = 0\n'
                f"[sweep]\npage_size = 200\n"
                + ("" if "stale_after" in sweep_keys else 'stale_after = "2h"\n')
                + f"{sweep_keys}{rules}"
            )
            config.chmod(0o600)
            counted.update(list=0, other=0)
            done = subprocess.run(
                [PY, "-m", "sweeper", "--config", str(config), "run", "--once", "--dry-run"],
                capture_output=True,
                text=True,
                check=False,
                env={k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")},
            )
            rows.append((name, counted["list"], counted["other"], done.returncode))
        # What the naive alternatives would cost, computed from the same fleet.
        now = datetime.now(UTC)
        older = sum(
            1
            for r in state.steps.values()
            if r["startedAt"] < format_timestamp(now - timedelta(hours=2))
        )
        pages_2h = max(1, -(-older // 200))
        older_1d = sum(
            1
            for r in state.steps.values()
            if r["startedAt"] < format_timestamp(now - timedelta(days=1))
        )
        rows.append(
            ("(second query per max_runtime, 1d)", pages_2h + max(1, -(-older_1d // 200)), 0, None)
        )
        rows.append(("(reading every RUNNING step)", max(1, -(-steps // 200)), 0, None))
    width = max(len(r[0]) for r in rows)
    for name, lists, other, code in rows:
        tail = "" if code is None else f"  other requests {other}, exit {code}"
        print(f"  {name:<{width}}  listing requests {lists:>4}{tail}")


class Worker:
    """One step: starts, heartbeats every second; a wedged one beats on for ever, the
    others finish before max_runtime."""

    def __init__(self, start: float, finishes_at: float | None) -> None:
        self.start = start
        self.finishes_at = finishes_at

    def last_beat(self, now: float) -> float:
        return self.start + max(0, int(now - self.start))


def precise(seconds: float, seed: int) -> None:
    from starlette.requests import Request
    from starlette.responses import Response

    from sweeper.devserver.server import serve_in_thread
    from sweeper.devserver.state import PlatformState

    limit, stale, interval, n = 20.0, 6.0, 5.0, 150
    rng = random.Random(seed)
    epoch = time.time()
    workers: dict[str, Worker] = {}
    for i in range(n):
        start = epoch + rng.uniform(-15, seconds - limit - interval - 5)
        wedged = i % 3 == 0
        finishes = None if wedged else start + rng.uniform(2, limit - 2)
        workers[f"w{i:03d}"] = Worker(start, finishes)
    state = PlatformState()
    marked: dict[str, float] = {}
    wrong: list[str] = []
    requests = {"list": 0, "read": 0, "patch": 0}

    def bring_up_to_date(now: float) -> None:
        for step_id, w in workers.items():
            if w.start > now:
                continue
            if step_id not in state.steps:
                state.add(
                    {
                        "stepId": step_id,
                        "organizationId": "org-live",
                        "status": "RUNNING",
                        "startedAt": format_timestamp(datetime.fromtimestamp(w.start, UTC)),
                    }
                )
            record = state.steps[step_id]
            if record["status"] != "RUNNING":
                continue
            if w.finishes_at is not None and now >= w.finishes_at:
                state.update(step_id, status="SUCCEEDED")
                continue
            beat = format_timestamp(datetime.fromtimestamp(w.last_beat(now), UTC))
            if record.get("lastHeartbeatAt") != beat:
                state.update(step_id, lastHeartbeatAt=beat)

    async def intercept(request: Request) -> Response | None:
        now = time.time()
        bring_up_to_date(now)
        path = request.url.path
        if request.method == "PATCH":
            requests["patch"] += 1
            step_id = path.rsplit("/", 1)[1]
            w, record = workers[step_id], state.steps[step_id]
            if record["status"] != "RUNNING":
                wrong.append(f"{step_id}: had finished")
            elif now - w.start < limit:
                wrong.append(f"{step_id}: ran only {now - w.start:.2f} s")
            else:
                marked.setdefault(step_id, now)
        elif path == STEPS_PATH:
            requests["list"] += 1
        else:
            requests["read"] += 1
        return None

    with (
        serve_in_thread(state, TOKEN, intercept=intercept) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        bring_up_to_date(epoch)
        config = Path(tmp) / "config.toml"
        config.write_text(
            f'[api]\nbase_url = "{server.base_url}"\ntoken = "{TOKEN}"\nmax_rate = 0\n'
            f'[schedule]\ninterval = "{interval:.0f}s"\nprecise = true\n'
            f'[sweep]\nstale_after = "{stale:.0f}s"\nmax_runtime = "{limit:.0f}s"\n'
        )
        config.chmod(0o600)
        log = Path(tmp) / "daemon.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [PY, "-m", "sweeper", "--config", str(config), "--log-format", "json", "run"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")},
            )
            end = epoch + seconds
            while (now := time.time()) < end:
                time.sleep(min(1.0, max(0.0, end - now)))
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        events = log.read_text().splitlines()
    runaway_marks = sum(
        '"trigger": "max_runtime"' in line and "step.marked" in line for line in events
    )
    due = {
        s: w.start + limit
        for s, w in workers.items()
        if w.finishes_at is None and w.start + limit + interval + 3 < epoch + seconds
    }
    missed = [s for s in due if s not in marked]
    lags = sorted(marked[s] - t for s, t in due.items() if s in marked)
    print(
        f"\n== precise marking of runaways: {n} steps beating every second, a third wedged;"
        f" stale_after {stale:.0f}s, max_runtime {limit:.0f}s, interval {interval:.0f}s,"
        f" {seconds:.0f} s, seed {seed}"
    )
    print(
        f"  daemon exit {proc.returncode}; {len(marked)} marks"
        f" ({runaway_marks} step.marked trigger=max_runtime)"
    )
    print(
        f"  runaways due in time {len(due)}, missed {len(missed)}; wrong marks {len(wrong)}"
        + (f" ({'; '.join(wrong[:5])})" if wrong else "")
    )
    if lags:
        p99 = lags[min(len(lags) - 1, round(0.99 * (len(lags) - 1)))]
        print(
            f"  lag after startedAt + max_runtime: p50 {statistics.median(lags):.3f} s,"
            f" p99 {p99:.3f} s, max {lags[-1]:.3f} s, min {lags[0]:.3f} s (n={len(lags)})"
        )
    print("  requests: " + ", ".join(f"{k} {v}" for k, v in requests.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--only", choices=["listing", "precise"])
    args = parser.parse_args()
    print(f"sweeper runaway figures, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if args.only in (None, "listing"):
        listing(args.steps, args.seed)
    if args.only in (None, "precise"):
        precise(args.seconds, args.seed)


if __name__ == "__main__":
    main()
