"""A real etcd for the tests: Debian's `etcd-server`, on a free loopback port, in a temp dir.

`make test` and `.ci/run` install the package when it is missing; a test that
needs etcd and cannot find it fails (it is never skipped: the election would go
untested).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.e2e import free_port


@dataclass
class Etcd:
    """One etcd member; `stop()` and `start()` again keep its data (a restart)."""

    data_dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: More flags (TLS), and how the tests' own health check reaches it.
    extra_args: tuple[str, ...] = ()
    scheme: str = "http"
    #: An ssl.SSLContext (CA, and a client certificate loaded) for a TLS etcd.
    verify: object = True

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30) -> Etcd:
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        if not Path(binary).exists():
            raise AssertionError(
                "etcd is not installed: `make test` installs Debian's etcd-server"
                " (apt-get install -y etcd-server)"
            )
        peer = f"http://127.0.0.1:{self.peer_port}"
        log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--name=test",
                    f"--data-dir={self.data_dir}",
                    f"--listen-client-urls={self.url}",
                    f"--advertise-client-urls={self.url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=test={peer}",
                    "--log-level=error",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = httpx.get(
                    self.url + "/health",
                    timeout=1,
                    verify=self.verify,  # type: ignore[arg-type]
                )
                if answer.status_code == 200 and answer.json().get("health") == "true":
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"etcd did not start (see {log_path})")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
