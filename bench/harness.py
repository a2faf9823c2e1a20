"""Run servers on one core and wrk on the other, alternate the contenders over rounds, keep medians.

Everything listens on 127.0.0.1 only, and every run is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = "0"
LOAD_CPU = "1"
BIN = Path(sys.executable).parent
# The peers' server: one worker, uvicorn's defaults (uvloop, httptools), no uvicorn access log.
UVICORN_FLAGS = ["--host", "127.0.0.1", "--workers", "1", "--no-access-log", "--log-level", "warning"]
# This service runs as its Procfile runs it (`python -m service serve`: uvicorn with the service's own
# options, one worker here); give it PROCFILE_ENV.
PROCFILE = [sys.executable, "-m", "service", "serve"]
PROCFILE_ENV = {"HOST": "127.0.0.1", "PORT": "{port}", "WEB_CONCURRENCY": "1"}


@dataclass
class Measurement:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    errors: int


@dataclass
class Series:
    """One contender's measurements in one scenario, a round at a time."""

    label: str
    runs: list[Measurement] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(m.rps for m in self.runs)

    @property
    def p50_ms(self) -> float:
        return statistics.median(m.p50_ms for m in self.runs)

    @property
    def p99_ms(self) -> float:
        return statistics.median(m.p99_ms for m in self.runs)

    @property
    def non_2xx(self) -> int:
        return sum(m.non_2xx for m in self.runs)

    @property
    def errors(self) -> int:
        return sum(m.errors for m in self.runs)


def require_tools() -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print(f"installing {' '.join(missing)} from Debian's packages", file=sys.stderr)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk", "util-linux"], check=True, env=env)
        else:
            raise SystemExit(f"missing tools: {', '.join(missing)} (apt-get install wrk util-linux)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]

    def rss_kib(self) -> int:
        return rss_kib(self.process.pid)

    def pids(self) -> list[int]:
        """The server's process and all its descendants (a supervisor's workers, gunicorn's)."""
        found, pending = [], [self.process.pid]
        while pending:
            pid = pending.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending += [int(child) for child in (task / "children").read_text().split()]
        return found

    def workers(self) -> list[int]:
        """The processes that answer requests: uvicorn's spawned workers when there is a supervisor
        (not multiprocessing's resource tracker), else the server process itself."""
        spawned = [pid for pid in self.pids()[1:] if b"spawn_main" in _cmdline(pid)]
        return spawned or [self.process.pid]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and its descendants still running."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """VmRSS of one process, in KiB (0 once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match[1]) if match else 0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@contextlib.contextmanager
def server(
    name: str, argv: list[str], env: dict[str, str], *, cpu: str = SERVER_CPU, ready_path: str = "/health"
) -> Iterator[Server]:
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    env = {name: value.replace("{port}", str(port)) for name, value in env.items()}
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **env}
    # Access lines are written, as in production, and thrown away here. Errors go to a file, not to a
    # pipe nobody reads while the server runs: the tracebacks a hostile scenario provokes would fill a
    # pipe's 64 KiB and stop the server mid-write.
    with open(os.devnull, "wb") as log, tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            ["taskset", "-c", cpu, *argv], env=full_env, stdout=log, stderr=errors, cwd=env.get("BENCH_CWD", ROOT)
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    errors.seek(0)
                    raise RuntimeError(f"{name} exited: {errors.read().decode(errors='replace')[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(url + ready_path, timeout=2)
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not start")
                time.sleep(0.1)
            yield Server(name, url, process)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def uvicorn(app: str) -> list[str]:
    return [str(BIN / "uvicorn"), app, "--port", "{port}", *UVICORN_FLAGS]


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:  # wrk prints e.g. "-nanus" when nothing completed
        return float("nan")
    return float(match[1]) * _UNITS[match[2]]


def wrk(url: str, *, connections: int, seconds: float, script: Path | None = None, cpu: str = LOAD_CPU,
        headers: dict[str, str] | None = None) -> Measurement:  # fmt: skip
    argv = [
        "taskset",
        "-c",
        cpu,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if script:
        argv += ["-s", str(script)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run([*argv, url], check=False, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed: {out}{done.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    # Anchored: "95.50%" in the thread-stats line must not pass for the 50th percentile.
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)[1])
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)[1])
    requests = int(re.search(r"(\d+) requests in", out)[1])
    non_2xx = int(m[1]) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return Measurement(rps, p50, p99, requests, non_2xx, errors)


def compare(targets: dict[str, str], *, rounds: int, seconds: float, warmup: float, connections: int,
            script: Path | None = None, headers: dict[str, dict[str, str]] | None = None) -> dict[str, Series]:  # fmt: skip
    """Alternate the targets round by round (order reversed every other round), after a warm-up each.
    `headers` gives request headers per target label."""
    series = {label: Series(label) for label in targets}
    labels = list(targets)
    for round_ in range(rounds):
        for label in labels if round_ % 2 == 0 else reversed(labels):
            sent = (headers or {}).get(label)
            if warmup:
                wrk(targets[label], connections=connections, seconds=warmup, script=script, headers=sent)
            series[label].runs.append(wrk(targets[label], connections=connections, seconds=seconds, script=script, headers=sent))
    return series


def lua_script(body: str) -> Path:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(body)
    return Path(handle.name)


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, TypeError):
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
        mem = f"{kib // 1024 // 1024} GiB"
    from importlib.metadata import version

    names = ("starlette", "uvicorn", "msgspec", "httpx", "fastapi", "pydantic", "litestar", "flask", "gunicorn", "brotli")
    packages = ", ".join(f"{p} {version(p)}" for p in names)
    wrk_version = subprocess.run(["wrk", "--version"], check=False, capture_output=True, text=True).stdout.splitlines()[0:1]
    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores (servers pinned to core {SERVER_CPU}, load and upstream to core {LOAD_CPU})",
        "Memory": mem,
        "Python": sys.version.split()[0],
        "Packages": packages,
        "Load generator": (wrk_version or ["wrk"])[0].split(" Copyright")[0],
    }
