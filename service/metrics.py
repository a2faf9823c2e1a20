"""Prometheus metrics and `GET /metrics`: correct across the workers of a dyno, cheap on the hot path.

`Series` is built by the app's `Telemetry` (service.telemetry) when METRICS_TOKEN is set; without it nothing
records and prometheus_client is never imported. Requests and cache lookups are added up in
plain Python and written at most 50 ms later (and before a scrape, and at exit): a scrape may miss
another worker's last 50 ms, a killed worker loses at most that much. `python -m service serve` runs the workers in
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, prepared before they start): each worker writes its values
to memory-mapped files of its own, and a scrape answered by any worker sums every worker's files. The
files of a worker that died stay, so a replaced worker does not reset the totals; only its live gauges
(store calls waiting, process metrics) are dropped.

The series (all names start with `website_api_`, except the standard `process_*`):
- `http_requests_total{method,route,status}` and `http_request_duration_seconds{method,route}`, where
  route is the matched route template (`/github/repos/{name}`) or `(unmatched)`;
- `github_requests_total{outcome}` (200, 304, 404, timeout, error, rate_limited) and
  `github_ratelimit_remaining{resource}` (the last `x-ratelimit-remaining` GitHub sent);
- `cache_lookups_total{resource,state}` (hit, miss, revalidated, stale);
- `store_call_duration_seconds{operation}` (waiting for a pool slot included) and `store_calls_waiting`;
- `webhook_deliveries_total{event,outcome}`;
- `process_*{pid}` of every live worker.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram, ProcessCollector
    from prometheus_client.metrics_core import Metric

PREFIX = "website_api_"
UNMATCHED = "(unmatched)"  # every path that matched no route: random paths cannot add series
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other method is "other"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GITHUB_OUTCOMES = {"ok": "200", "not modified": "304", "not found": "404", "timeout": "timeout", "rate limited": "rate_limited"}
# GitHub's rate-limit buckets (x-ratelimit-resource); an unknown one is "other".
GITHUB_RATE_LIMIT_RESOURCES = frozenset({
    "core", "search", "code_search", "graphql", "integration_manifest", "dependency_snapshots", "code_scanning_upload",
    "actions_runner_registration", "scim", "audit_log",
})  # fmt: skip
MAX_WEBHOOK_EVENTS = 64  # distinct event names kept as labels; later ones count as "other"
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")
TEXT_FORMAT = b"text/plain; version=0.0.4; charset=utf-8"
FLUSH_EVERY = 0.05  # seconds the hot path's counts may wait before they are written for scrapes
MAX_PENDING = 4096  # durations of one series kept between two flushes, at most
RequestKey = tuple[str, str | None, int]  # method, route as matched, status


class Series:
    """Every series of the service. Created once per process: prometheus_client keeps one value per
    name and labels (in multiprocess mode, one slot in this process's files)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: multiprocess mode has none either
        # Where the workers' files are, if this process is one of several (read by prometheus_client too).
        self.directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            PREFIX + "http_requests_total", "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            PREFIX + "http_request_duration_seconds", "Time to answer a request, by method and route template.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.github = Counter(
            PREFIX + "github_requests_total", "Calls to the GitHub API by outcome: 200, 304, 404, timeout, error, rate_limited.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.github_remaining = Gauge(
            PREFIX + "github_ratelimit_remaining", "The last x-ratelimit-remaining GitHub sent, by x-ratelimit-resource.",
            ["resource"], registry=registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.cache = Counter(
            PREFIX + "cache_lookups_total", "GitHub cache lookups by resource and state: hit, miss, revalidated, stale.",
            ["resource", "state"], registry=registry,
        )  # fmt: skip
        self.store = Histogram(
            PREFIX + "store_call_duration_seconds", "Database store calls by operation, waiting for a pool slot included.",
            ["operation"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.store_waiting = Gauge(
            PREFIX + "store_calls_waiting", "Store calls waiting for a free database pool slot now.",
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.webhooks = Counter(
            PREFIX + "webhook_deliveries_total", "Webhook deliveries received, by event and outcome.",
            ["event", "outcome"], registry=registry,
        )  # fmt: skip
        self.deploy_hooks = Counter(
            PREFIX + "deploy_hook_deliveries_total", "Deploy-hook POSTs by outcome: delivered, retried, given_up.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        if self.directory is None:
            registry.register(WorkerProcesses(lambda: [os.getpid()]))
        else:
            forget_dead_workers(self.directory)  # a replacement worker starts: whoever it replaces is gone
        # Label children, looked up once per distinct label set rather than on every request.
        self._request_children: dict[RequestKey, tuple[Counter, Histogram]] = {}
        self._children: dict[tuple[object, ...], Any] = {}
        self._waiting = 0.0
        self.webhook_events: set[str] = set()
        # The hot path (requests, cache lookups) only notes here, in plain Python; `flush` writes to
        # prometheus_client at most FLUSH_EVERY later, off the request (in multiprocess mode each write is to a file).
        self._pending_requests: dict[RequestKey, list[float]] = {}
        self._pending_lookups: dict[tuple[str, str], int] = {}
        self._flush_at: asyncio.TimerHandle | None = None
        atexit.register(self.flush)

    def observe_request(self, method: str, route: str | None, status: int, seconds: float) -> None:
        key = (method if method in METHODS else "other", route, status)
        pending = self._pending_requests.get(key)
        if pending is None:
            pending = self._pending_requests[key] = []
        pending.append(seconds)
        if len(pending) >= MAX_PENDING:  # a flood between two flushes: written now, so the list stays bounded
            self.flush()
        elif self._flush_at is None:
            self._schedule_flush()

    def count_lookup(self, resource: str, state: str) -> None:
        key = (resource, state)
        self._pending_lookups[key] = self._pending_lookups.get(key, 0) + 1
        if self._flush_at is None:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        try:
            self._flush_at = asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)
        except RuntimeError:  # no event loop in this thread: write at once
            self.flush()

    def flush(self) -> None:
        """Write what the hot path added up (before a scrape, every FLUSH_EVERY, and at exit)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        requests, self._pending_requests = self._pending_requests, {}
        for key, durations in requests.items():
            counter, histogram = self._request_children.get(key) or self._children_of(key)
            counter.inc(len(durations))
            for seconds in durations:  # prometheus_client's public API observes one value at a time
                histogram.observe(seconds)
        lookups, self._pending_lookups = self._pending_lookups, {}
        for (resource, state), count in lookups.items():
            self.child(self.cache, resource, state).inc(count)

    def _children_of(self, key: RequestKey) -> tuple[Counter, Histogram]:
        method, route, status = key
        labels = (method, _CONVERTOR.sub(r"{\1}", route) if route else UNMATCHED)  # /announcements/{id:int} -> {id}
        children = self._request_children[key] = (self.requests.labels(*labels, str(status)), self.latency.labels(*labels))
        return children

    def child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), cached."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_waiting(self, waiting: float) -> None:
        if waiting != self._waiting:
            self._waiting = waiting
            self.store_waiting.set(waiting)

    def exposition(self) -> bytes:
        """The text format of every series, of every worker when there are several. Reads files: run it
        in the thread pool."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if self.directory is None:
            return generate_latest(self.registry)
        directory = self.directory
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        registry.register(WorkerProcesses(lambda: forget_dead_workers(directory)))
        return generate_latest(registry)


class WorkerProcesses:
    """The standard process_* series (CPU, memory, open files, start time) of each live worker, labelled
    by pid: prometheus_client's own ProcessCollector reports only the process that answers the scrape."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self.pids = pids

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import Metric

        families: dict[str, Metric] = {}
        for pid in self.pids():
            for family in _process_collector(pid).collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()


def _process_collector(pid: int) -> ProcessCollector:
    from prometheus_client import ProcessCollector

    return ProcessCollector(pid=lambda: pid, registry=None)


def forget_dead_workers(directory: str) -> list[int]:
    """The pids of live workers; the live gauges of dead ones are removed (their counters stay)."""
    from prometheus_client.multiprocess import mark_process_dead

    alive = []
    pids = {int(m[1]) for path in glob.glob(os.path.join(directory, "gauge_live*.db")) if (m := re.search(r"_(\d+)\.db$", path))}
    for pid in sorted(pids):
        if _running(pid):
            alive.append(pid)
        else:
            mark_process_dead(pid, directory)
    return alive


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"  # a zombie is dead, just not reaped yet
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
