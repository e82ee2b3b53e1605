"""Print the mutation score from `mutmut results --all true` (run by `make mutation`)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

BIN = Path(sys.executable).parent


def main() -> None:
    listing = subprocess.run(
        [str(BIN / "mutmut"), "results", "--all", "true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    statuses = Counter(
        line.rsplit(": ", 1)[1].strip() for line in listing.splitlines() if ": " in line
    )
    killed = statuses["killed"] + statuses["timeout"]
    total = sum(statuses.values())
    print(f"mutants: {total}  " + "  ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    if total:
        print(f"mutation score (killed or timed out): {killed / total:.1%}")
    for line in listing.splitlines():
        if line.endswith(": survived"):
            print("  survived:", line.split(":")[0].strip())


if __name__ == "__main__":
    main()
