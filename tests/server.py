"""Start the service the way the Procfile does, as a real process on a loopback port."""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def procfile_command(process: str = "web") -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{process}:"):
            return line.split(":", 1)[1].strip()
    raise LookupError(process)


@contextlib.contextmanager
def procfile_server(
    env: dict[str, str], *, cwd: Path, timeout: float = 30, log: Path | None = None, command: str | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The Procfile's web command under bash, as Heroku runs it, with this interpreter (or `command`, run
    the same way). Output (JSON log lines) goes to `log`, a file, so a busy server never blocks on a full pipe."""
    log = log or cwd / "server.log"
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    # HOST keeps test servers on loopback; PATH puts this interpreter first, as the venv would be on a dyno.
    full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", **env}
    command = command or procfile_command()
    output = log.open("ab")
    process = subprocess.Popen(
        ["bash", "-c", f"cd {shlex.quote(str(cwd))} && exec {command}"],
        env=full_env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("server did not answer /health in time")
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        output.close()
