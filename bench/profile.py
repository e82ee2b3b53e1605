"""Where a sweep's CPU goes, by layer: py-spy samples of `run --once`, 3,000 zombies.

The sweeper runs against a fresh stand-in (`sweeper dev-server`, its own process) as
in `bench/run.py --only cpu-vs-floor`, under `py-spy record --gil` (only the time a
thread holds the GIL: Python work, not waits in the kernel). Each sample is charged
to the innermost frame that belongs to a layer (our transport, httpx, structlog,
...), so a stdlib call counts for the layer that made it. Prints one line a layer.

Needs py-spy (`.venv/bin/pip install py-spy`, a profiler, not a project
dependency). `python bench/profile.py [--zombies N] [--rate HZ] [--raw FILE]`.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import PY, Platform, sweeper_config  # noqa: E402

#: (a piece of "file:function", layer), first match wins, innermost frame first.
LAYERS = [
    ("sweeper/transport.py", "our transport (transport.py, http11.py)"),
    ("sweeper/http11.py", "our transport (transport.py, http11.py)"),
    ("sweeper/proxied.py", "aiohttp transport"),
    ("aiohttp/", "aiohttp transport"),
    ("yarl/", "aiohttp transport"),
    ("multidict/", "aiohttp transport"),
    ("httpx/_models.py:Cookies", "httpx cookies"),
    ("httpx/", "httpx client (requests, URLs, headers, streams)"),
    ("structlog/", "logging (structlog, rendering, redaction)"),
    ("sweeper/logs.py", "logging (structlog, rendering, redaction)"),
    ("tenacity/", "retry machinery (tenacity)"),
    ("pydantic", "validation (model.py, pydantic)"),
    ("sweeper/model.py", "validation (model.py, pydantic)"),
    ("sweeper/answers.py", "answers: classify, JSON decode"),
    ("sweeper/encodings.py", "answers: caps, Content-Encoding"),
    ("sweeper/guards.py", "Date/clock check, guards"),
    ("prometheus", "metrics"),
    ("sweeper/ops.py", "metrics"),
    ("sweeper/api.py", "api.py (URL, JSON encode, caps, gate, pacing, timeout)"),
    ("sweeper/exchange.py", "api.py (URL, JSON encode, caps, gate, pacing, timeout)"),
    ("sweeper/pages.py", "api.py (URL, JSON encode, caps, gate, pacing, timeout)"),
    ("sweeper/pacing.py", "api.py (URL, JSON encode, caps, gate, pacing, timeout)"),
    ("sweeper/retries.py", "api.py (URL, JSON encode, caps, gate, pacing, timeout)"),
    ("sweeper/refusals.py", "api.py (URL, JSON encode, caps, gate, pacing, timeout)"),
    ("sweeper/", "sweep, writes, policy, report (deciding, settling)"),
]
_FRAME = re.compile(r"(.*) \((.*?)(?::\d+)?\)$")


def layer_of(frames: list[str]) -> str:
    if any("_find_and_load" in frame for frame in frames):
        return "start-up (imports)"
    for frame in reversed(frames):
        match = _FRAME.match(frame)
        function, file = (match.group(1), match.group(2)) if match else (frame, frame)
        where = f"{file.split('site-packages/')[-1]}:{function}"
        for piece, layer in LAYERS:
            if piece in where:
                return layer
    return "asyncio event loop" if any("asyncio" in f for f in frames) else "other"


def summarize(raw: Path) -> list[tuple[str, int]]:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        counts[layer_of(stack.split(";"))] += int(count)
    return counts.most_common()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zombies", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp, Platform(args.zombies, 0, 0) as p:
        raw = args.raw or Path(tmp) / "stacks.txt"
        config = sweeper_config(Path(tmp), p.url, 32, 1000)
        record = [spy, "record", "--gil", "-r", str(args.rate), "-f", "raw", "-o", str(raw)]
        sweep = [PY, "-m", "sweeper", "--config", str(config), "--log-format", "json"]
        subprocess.run(
            [*record, "--", *sweep, "run", "--once"],
            check=True,
            capture_output=True,
        )
        rows = summarize(raw)
    total = sum(count for _, count in rows)
    per_step_ms = 1000 / args.rate / args.zombies
    print(f"{total} samples at {args.rate}/s, {args.zombies:,} zombies (GIL held)")
    for layer, count in rows:
        share = 100 * count / total
        print(f"{share:5.1f}%  {count * per_step_ms:6.3f} ms/step  {layer}")


if __name__ == "__main__":
    main()
