"""The performance benchmark: the sweeper against the limit, on loopback.

Every ratio is the median of alternating A/B runs in this one invocation; the
stand-in platform (`sweeper dev-server`) runs in its own process, fresh for each
run, so that CPU and memory are the measured program's alone. Figures are
printed, never asserted: `make bench` or `python bench/run.py [--only NAME]`.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
TOKEN = "bench-token"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    wall: float
    cpu: float
    max_rss_kib: int
    out: str
    err: str


def run_child(argv: list[str], env: dict[str, str] | None = None) -> Run:
    """Run to the end; CPU and peak RSS come from wait4's rusage of that child alone."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, out.read(), err.read())


class Platform:
    """`sweeper dev-server` in its own process, seeded for one run."""

    def __init__(self, zombies: int, live: int, latency_ms: int) -> None:
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "sweeper",
                "dev-server",
                "--port",
                "0",
                "--token",
                TOKEN,
                "--zombies",
                str(zombies),
                "--live",
                str(live),
                "--latency",
                f"{latency_ms / 1000}",
                "--seed",
                "bench",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().split()[-1]

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def sweeper_config(
    directory: Path, url: str, concurrency: int, page_size: int, max_rate: int = 0
) -> Path:
    path = directory / "config.toml"
    path.write_text(
        f'[api]\nbase_url = "{url}"\ntoken = "{TOKEN}"\nmax_concurrency = {concurrency}\n'
        f"max_rate = {max_rate}\n"
        f'[sweep]\npage_size = {page_size}\nmax_steps = 1000000\ndeadline = "1h"\n'
    )
    path.chmod(0o600)
    return path


def sweeper_once(
    url: str,
    *,
    concurrency: int = 32,
    page_size: int = 1000,
    dry_run: bool = False,
    max_rate: int = 0,
) -> tuple[Run, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        config = sweeper_config(Path(tmp), url, concurrency, page_size, max_rate)
        argv = [
            PY,
            "-m",
            "sweeper",
            "--config",
            str(config),
            "--log-format",
            "json",
            "run",
            "--once",
        ] + (["--dry-run"] if dry_run else [])
        run = run_child(argv)
    finished = [json.loads(line) for line in run.err.splitlines() if '"sweep.finished"' in line]
    if not finished:
        raise RuntimeError(f"the sweep did not finish:\n{run.err[-2000:]}")
    return run, finished[0]


def bare(url: str, concurrency: int = 32) -> tuple[Run, dict[str, Any]]:
    run = run_child(
        [PY, str(HERE / "bare_client.py"), url, "--token", TOKEN, "--concurrency", str(concurrency)]
    )
    return run, json.loads(run.out)


def floor(url: str, concurrency: int = 32) -> tuple[Run, dict[str, Any]]:
    argv = [PY, str(HERE / "floor_client.py"), url, "--token", TOKEN]
    run = run_child([*argv, "--concurrency", str(concurrency)])
    return run, json.loads(run.out)


def naive(url: str) -> tuple[Run, dict[str, Any]]:
    run = run_child([PY, str(HERE / "naive_loop.py"), url, "--token", TOKEN])
    return run, json.loads(run.out)


def alternate(rounds: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[float, float]:
    """Medians of A and B, run A, B, A, B, ... so drift hits both alike."""
    xs, ys = [], []
    for _ in range(rounds):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys)


# -- the figures ---------------------------------------------------------------


def sweep_vs_bare(rounds: int) -> tuple[str, float]:
    def sweeper_side() -> float:
        with Platform(2000, 0, 50) as p:
            _, finished = sweeper_once(p.url, concurrency=32)
            assert finished["marked"] == 2000, finished
            return float(finished["duration_ms"]) / 1000

    def bare_side() -> float:
        with Platform(2000, 0, 50) as p:
            _, result = bare(p.url, 32)
            assert result["marked"] == 2000, result
            return float(result["seconds"])

    s, b = alternate(rounds, sweeper_side, bare_side)
    return f"{s:.2f} s / {b:.2f} s", s / b


def cpu_vs_bare(rounds: int) -> tuple[str, float]:
    def sweeper_side() -> float:
        with Platform(3000, 0, 0) as p:
            run, finished = sweeper_once(p.url, concurrency=32)
            assert finished["marked"] == 3000, finished
            return run.cpu

    def bare_side() -> float:
        with Platform(3000, 0, 0) as p:
            run, result = bare(p.url, 32)
            assert result["marked"] == 3000, result
            return run.cpu

    s, b = alternate(rounds, sweeper_side, bare_side)
    return f"{s:.2f} s / {b:.2f} s CPU", s / b


def sweep_vs_floor(rounds: int) -> tuple[str, float]:
    """Sweep time against the floor's, 2,000 zombies at 50 ms (what latency leaves)."""

    def sweeper_side() -> float:
        with Platform(2000, 0, 50) as p:
            _, finished = sweeper_once(p.url, concurrency=32)
            assert finished["marked"] == 2000, finished
            return float(finished["duration_ms"]) / 1000

    def floor_side() -> float:
        with Platform(2000, 0, 50) as p:
            _, result = floor(p.url, 32)
            assert result["marked"] == 2000, result
            return float(result["seconds"])

    s, f = alternate(rounds, sweeper_side, floor_side)
    return f"{s:.2f} s / {f:.2f} s", s / f


def cpu_vs_floor(rounds: int) -> tuple[str, float]:
    """CPU per step of the sweeper process against the floor's, 3,000 zombies."""
    zombies = 3000

    def sweeper_side() -> float:
        with Platform(zombies, 0, 0) as p:
            run, finished = sweeper_once(p.url, concurrency=32)
            assert finished["marked"] == zombies, finished
            return run.cpu

    def floor_side() -> float:
        with Platform(zombies, 0, 0) as p:
            run, result = floor(p.url, 32)
            assert result["marked"] == zombies, result
            return run.cpu

    s, f = alternate(rounds, sweeper_side, floor_side)
    per = 1000 / zombies
    return f"{s * per:.3f} ms / {f * per:.3f} ms CPU per step", s / f


def bare_vs_floor(rounds: int) -> tuple[str, float]:
    """What the old limit (bare_client.py) costs over the floor, 3,000 zombies."""

    def side(client: Callable[[str, int], tuple[Run, dict[str, Any]]]) -> Callable[[], float]:
        def measure() -> float:
            with Platform(3000, 0, 0) as p:
                run, result = client(p.url, 32)
                assert result["marked"] == 3000, result
                return run.cpu

        return measure

    b, f = alternate(rounds, side(bare), side(floor))
    return f"{b:.2f} s / {f:.2f} s CPU", b / f


def rss_listing(rounds: int) -> tuple[str, float]:
    def listing(live: int) -> Callable[[], float]:
        def side() -> float:
            with Platform(0, live, 0) as p:
                run, finished = sweeper_once(p.url, page_size=1000, dry_run=True)
                assert finished["not_stale"] == live, finished
                return run.max_rss_kib / 1024

        return side

    big, small = alternate(rounds, listing(50_000), listing(1_000))
    return f"{big:.1f} MiB / {small:.1f} MiB", big / small


def naive_vs_sweeper(rounds: int) -> tuple[str, float]:
    def naive_side() -> float:
        with Platform(200, 0, 20) as p:
            _, result = naive(p.url)
            assert result["marked"] == 200, result
            return float(result["seconds"])

    def sweeper_side() -> float:
        with Platform(200, 0, 20) as p:
            _, finished = sweeper_once(p.url, concurrency=32)
            assert finished["marked"] == 200, finished
            return float(finished["duration_ms"]) / 1000

    n, s = alternate(rounds, naive_side, sweeper_side)
    return f"{n:.2f} s / {s:.2f} s", n / s


class EmptyPlatform:
    """A bare asyncio server answering an empty listing; notes when requests arrive."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.readline():
                self.arrivals.append(time.perf_counter())
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                body = b'{"success":true,"data":[],"nextCursor":null}'
                date = email.utils.formatdate(usegmt=True)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Date: {date}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

        async def start() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await server.serve_forever()

        threading.Thread(target=lambda: self.loop.run_until_complete(start()), daemon=True).start()
        ready.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def startup(rounds: int, platform: EmptyPlatform) -> tuple[str, float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        config = sweeper_config(Path(tmp), platform.url, 8, 200)
        for _ in range(rounds):
            platform.arrivals.clear()
            spawned = time.perf_counter()
            run_child([PY, "-m", "sweeper", "--config", str(config), "run", "--once"])
            times.append(platform.arrivals[0] - spawned)
    median = statistics.median(times)
    return f"{median:.3f} s", median


def daemon_idle(seconds: float, platform: EmptyPlatform) -> tuple[str, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = sweeper_config(Path(tmp), platform.url, 8, 200)
        platform.arrivals.clear()
        proc = subprocess.Popen(
            [PY, "-m", "sweeper", "--config", str(config), "--log-format", "json", "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not platform.arrivals:
            time.sleep(0.05)
        time.sleep(1.0)  # let the first sweep settle before measuring the idle time

        def cpu_seconds() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / TICK

        def rss_mib() -> float:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
            return 0.0

        cpu_before, peak = cpu_seconds(), rss_mib()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1)
            peak = max(peak, rss_mib())
        cpu_used = cpu_seconds() - cpu_before
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return f"RSS {peak:.1f} MiB, CPU {cpu_used:.2f} s in {seconds:.0f} s", peak, cpu_used


def race_window(latency_ms: int, zombies: int = 1000) -> tuple[str, float]:
    """Time from the platform answering a step's re-read to it applying that step's PATCH.

    A worker that finishes inside this window is overwritten; outside it, the re-read
    catches it. Measured on the platform's side (the stand-in, in this process).
    """
    sys.path.insert(0, str(HERE.parent))
    from datetime import timedelta

    from sweeper.devserver.app import Faults
    from sweeper.devserver.server import serve_in_thread
    from sweeper.devserver.state import PlatformState

    state = PlatformState()
    state.seed(zombies, 0, seed="race")
    faults = Faults(latency=timedelta(milliseconds=latency_ms))
    with serve_in_thread(state, TOKEN, faults=faults) as server:
        counters = server.app.state.counters
        counters.keep_arrivals = True
        sweeper_once(server.base_url, concurrency=32)
        handled = list(counters.handled)
    reads = {path: t for t, method, path in handled if method == "GET"}
    windows = sorted(t - reads[path] for t, method, path in handled if method == "PATCH")
    p50 = statistics.median(windows) * 1000
    p99 = windows[int(len(windows) * 0.99) - 1] * 1000
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {windows[-1] * 1000:.1f} ms", p99


def stand_in_throughput(in_flight: int, latency_ms: int, zombies: int) -> tuple[str, float]:
    """Requests per second the stand-in serves to the bare client (it has a process alone)."""
    with Platform(zombies, 0, latency_ms) as p:
        _, result = bare(p.url, in_flight)
    requests = 2 * result["marked"] + zombies // 1000 + 1
    rate = requests / float(result["seconds"])
    return f"{rate:,.0f} requests/s ({requests:,} in {result['seconds']:.2f} s)", rate


#: The A/B ratio figures: name, figure, work, measurement, target, check.
RATIOS: list[
    tuple[str, str, str, Callable[[int], tuple[str, float]], str, Callable[[float], bool]]
] = [
    (
        "sweep-vs-bare",
        "sweep time / bare client time",
        "2,000 zombies, 50 ms, 32 in flight",
        sweep_vs_bare,
        "<= 1.10",
        lambda r: r <= 1.10,
    ),
    (
        "cpu-vs-bare",
        "sweeper CPU / bare client CPU",
        "3,000 zombies, no latency",
        cpu_vs_bare,
        "<= 8",
        lambda r: r <= 8,
    ),
    (
        "sweep-vs-floor",
        "sweep time / floor client time",
        "2,000 zombies, 50 ms, 32 in flight",
        sweep_vs_floor,
        "(reported)",
        lambda r: True,
    ),
    (
        "cpu-vs-floor",
        "sweeper CPU / floor client CPU",
        "3,000 zombies, no latency",
        cpu_vs_floor,
        "<= 8",
        lambda r: r <= 8,
    ),
    (
        "bare-vs-floor",
        "bare client CPU / floor client CPU",
        "3,000 zombies, no latency",
        bare_vs_floor,
        "(reported)",
        lambda r: True,
    ),
    (
        "rss-listing",
        "peak RSS 50,000 live / 1,000 live",
        "dry run, page size 1,000",
        rss_listing,
        "<= 1.15",
        lambda r: r <= 1.15,
    ),
    (
        "naive-vs-sweeper",
        "naive loop time / sweeper time",
        "200 zombies, 20 ms",
        naive_vs_sweeper,
        ">= 10",
        lambda r: r >= 10,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds per ratio")
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--only", action="append", help="run only these figures")
    args = parser.parse_args()
    here = "python bench/run.py"
    rows: list[tuple[str, str, str, str, bool, str]] = []

    def want(name: str) -> bool:
        return not args.only or name in args.only

    for name, figure, work, measure, target, holds in RATIOS:
        if want(name):
            text, ratio = measure(args.rounds)
            rows.append((figure, work, f"{ratio:.2f} ({text})", target, holds(ratio), name))
    if want("startup") or want("daemon-idle"):
        empty = EmptyPlatform()
        if want("startup"):
            text, seconds = startup(max(5, args.rounds), empty)
            rows.append(
                (
                    "run --once start-up to first request",
                    "empty listing",
                    text,
                    "<= 0.5 s",
                    seconds <= 0.5,
                    "startup",
                )
            )
        if want("daemon-idle"):
            text, rss, cpu = daemon_idle(args.idle_seconds, empty)
            ok = rss <= 60 and cpu <= 0.05 * args.idle_seconds / 60
            rows.append(
                (
                    "daemon between sweeps",
                    f"idle {args.idle_seconds:.0f} s",
                    text,
                    "RSS <= 60 MiB, CPU ~ 0",
                    ok,
                    "daemon-idle",
                )
            )

    if want("stand-in"):
        for in_flight, latency, zombies in ((32, 0, 5000), (2000, 100, 10000)):
            text, _ = stand_in_throughput(in_flight, latency, zombies)
            rows.append(
                (
                    "stand-in platform throughput",
                    f"{in_flight} in flight, {latency} ms",
                    text,
                    "(reported)",
                    True,
                    "stand-in",
                )
            )
    if want("race-window"):
        for latency in (0, 50):
            text, _ = race_window(latency)
            rows.append(
                (
                    "re-read answered -> PATCH applied",
                    f"1,000 zombies, {latency} ms",
                    text,
                    "(reported)",
                    True,
                    "race-window",
                )
            )

    print(f"\nsweeper benchmark on {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"(medians of {args.rounds} alternating A/B rounds; figures depend on the machine)\n")
    header = ("figure", "work", "measured", "target", "ok", "reproduce")
    table = [header] + [
        (f, w, m, t, "yes" if ok else "NO", f"{here} --only {name}")
        for f, w, m, t, ok, name in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())


if __name__ == "__main__":
    main()
