"""The scenarios of the performance report, each measured as ratios within one run."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import harness
from bench.harness import ROOT, Series, server, uvicorn
from service.connections import UVICORN_HTTP

ADMIN_TOKEN = "bench-admin-token-0123456789"


@dataclass
class Profile:
    # Seven short rounds rather than three long ones, in the same time: on a shared VM the noise comes in
    # bursts of seconds, and a median of seven is moved by three bad rounds, a median of three by two.
    rounds: int = 7
    seconds: float = 2.0
    warmup: float = 1.0
    # A p99 needs more requests than a median: scenario 4 keeps three rounds of 5 s.
    tail_rounds: int = 3
    tail_seconds: float = 5.0
    memory_requests: int = 200_000


SMOKE = Profile(rounds=1, seconds=1.0, warmup=0.0, tail_rounds=1, tail_seconds=1.0, memory_requests=2_000)


@dataclass
class Goal:
    name: str
    measured: float
    target: float
    higher_is_better: bool = True
    unit: str = "×"

    @property
    def met(self) -> bool:
        return self.measured >= self.target if self.higher_is_better else self.measured <= self.target


@dataclass
class Outcome:
    title: str
    series: dict[str, Series] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    table: list[tuple[str, ...]] = field(default_factory=list)  # for scenarios without wrk series


@contextlib.contextmanager
def environment(profile: Profile) -> Iterator[dict[str, object]]:
    """The stand-in upstream (100 ms per answer, 30 repositories) and a seeded SQLite database."""
    workdir = Path(tempfile.mkdtemp(prefix="website-api-bench-"))
    with server("upstream", uvicorn("bench.upstream:app"), {"BENCH_UPSTREAM_DELAY": "0.1", "BENCH_UPSTREAM_REPOS": "30"},
                cpu=harness.LOAD_CPU, ready_path="/users/octo-dev") as upstream:  # fmt: skip
        database = workdir / "bench.db"
        ours_env = {"GITHUB_OWNER": "octo-dev", "GITHUB_API_URL": upstream.url, "DATABASE_URL": f"sqlite:///{database}",
                    "ADMIN_TOKEN": ADMIN_TOKEN, "ACCESS_LOG": "true", "LOG_LEVEL": "warning", "BENCH_CWD": str(workdir),
                    "SITE_URL": "https://example.com",
                    **harness.PROCFILE_ENV}  # fmt: skip
        with server("seed", harness.PROCFILE, ours_env) as seed:
            for i in range(30):
                body = {"title": f"Announcement {i}", "body": "Some **Markdown** text. " * 20, "tags": ["news"], "pinned": i == 0}
                httpx.post(
                    f"{seed.url}/announcements", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                ).raise_for_status()
        yield {"upstream": upstream, "ours_env": ours_env, "database": database, "workdir": workdir}


def _peer_env(env: dict[str, object], **extra: str) -> dict[str, str]:
    ours = env["ours_env"]
    assert isinstance(ours, dict)
    return {"GITHUB_OWNER": "octo-dev", "GITHUB_API_URL": ours["GITHUB_API_URL"], "BENCH_SQLITE_PATH": str(env["database"]),
            "BENCH_CWD": str(env["workdir"]), **extra}  # fmt: skip


def side_by_side(env: dict[str, object], profile: Profile) -> list[Outcome]:
    """Scenarios 1, 2 and 8: /health with all middleware, a cached /github/repos and the public
    /announcements list, against the peers, all in one alternating run."""
    ours_env = dict(env["ours_env"])
    # Metrics as `python -m service serve` runs them: prometheus_client's multiprocess mode, files in a directory.
    metrics_dir = Path(str(env["workdir"])) / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    metrics_env = {**ours_env, "METRICS_TOKEN": "bench-metrics-token-0123456789", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with (
        server("ours", harness.PROCFILE, ours_env) as ours,
        server("ours, metrics on", harness.PROCFILE, metrics_env) as metered,
        server("ours, read cache off", uvicorn("bench.variants:uncached_app") + ["--factory"], ours_env) as uncached,
        server("raw", uvicorn("bench.peers.raw_asgi:app"), {}) as raw,
        server("starlette", uvicorn("bench.peers.starlette_floor:app"), {}) as starlette,
        server("fastapi", uvicorn("bench.peers.fastapi_app:app"), _peer_env(env)) as fastapi,
        server("litestar", uvicorn("bench.peers.litestar_app:app"), _peer_env(env)) as litestar,
    ):
        for peer in (ours, metered, fastapi, litestar):  # fill the caches
            httpx.get(f"{peer.url}/github/repos", timeout=10).raise_for_status()
        targets = {
            "raw ASGI /health": f"{raw.url}/health",
            "bare Starlette /health": f"{starlette.url}/health",
            "this service /health": f"{ours.url}/health",
            "FastAPI /health": f"{fastapi.url}/health",
            "Litestar /health": f"{litestar.url}/health",
            "this service /github/repos (hit)": f"{ours.url}/github/repos",
            "this service /health, metrics on": f"{metered.url}/health",
            "this service /github/repos (hit), metrics on": f"{metered.url}/github/repos",
            "FastAPI /github/repos (hit)": f"{fastapi.url}/github/repos",
            "Litestar /github/repos (response cache hit)": f"{litestar.url}/github/repos",
            "this service /announcements (read cache)": f"{ours.url}/announcements",
            "this service /announcements/feed.atom": f"{ours.url}/announcements/feed.atom",
            "this service /announcements/feed.json": f"{ours.url}/announcements/feed.json",
            "this service /announcements/2 (by id)": f"{ours.url}/announcements/2",
            "this service /announcements/slug/announcement-1": f"{ours.url}/announcements/slug/announcement-1",
            "this service /announcements, read cache off (bench-only variant)": f"{uncached.url}/announcements",
            "FastAPI /announcements (sync def)": f"{fastapi.url}/announcements",
            "Litestar /announcements (sync_to_thread)": f"{litestar.url}/announcements",
        }
        series = harness.compare(targets, rounds=profile.rounds, seconds=profile.seconds, warmup=profile.warmup, connections=64)
    rps = {label: s.rps for label, s in series.items()}
    ours_health, ours_hit = rps["this service /health"], rps["this service /github/repos (hit)"]
    s1 = Outcome(
        "1. GET /health, all production middleware on (64 connections)",
        {
            k: series[k]
            for k in ("raw ASGI /health", "bare Starlette /health", "this service /health", "FastAPI /health", "Litestar /health")
        },
        [
            Goal("this service / raw-ASGI floor", ours_health / rps["raw ASGI /health"], 0.65),
            Goal("this service / bare Starlette", ours_health / rps["bare Starlette /health"], 0.85),
            Goal("this service / FastAPI", ours_health / rps["FastAPI /health"], 2.3),
            Goal("this service / Litestar", ours_health / rps["Litestar /health"], 1.5),
        ],
        [
            (
                "Production middleware: request id, JSON access line (to /dev/null here), nosniff, request timeout "
                "(whose timer /health, answered at once, is spared), body limit."
            ),
            (
                f"Bare Starlette (one route, the floor's fixed bytes, no middleware, no handlers) reaches "
                f"{rps['bare Starlette /health'] / rps['raw ASGI /health']:.2f}× the raw floor: the framework's share before any "
                f"code of ours runs."
            ),
            "Litestar answers a typed async handler returning a msgspec struct, with no middleware configured.",
        ],
    )
    s2 = Outcome(
        "2. GET /github/repos, cache hit (30 repositories, 64 connections)",
        {
            k: series[k]
            for k in (
                "this service /health",
                "this service /github/repos (hit)",
                "FastAPI /github/repos (hit)",
                "Litestar /github/repos (response cache hit)",
            )
        },
        [
            Goal("repos hit / this service's /health", ours_hit / ours_health, 0.9),
            Goal("this service / FastAPI (both cached)", ours_hit / rps["FastAPI /github/repos (hit)"], 4.0),
            Goal("this service / Litestar (both cached)", ours_hit / rps["Litestar /github/repos (response cache hit)"], 1.5),
        ],
        [
            (
                "The FastAPI peer caches its Pydantic models and re-serialises them through response_model on every hit; "
                "Litestar's response cache keeps the encoded answer and replays it; this service keeps the encoded bytes."
            )
        ],
    )
    ours_read = rps["this service /announcements (read cache)"]
    s8 = Outcome(
        "8. GET /announcements, public list of 20 (64 connections, SQLite)",
        {
            k: series[k]
            for k in (
                "this service /announcements (read cache)",
                "this service /github/repos (hit)",
                "this service /announcements, read cache off (bench-only variant)",
                "FastAPI /announcements (sync def)",
                "Litestar /announcements (sync_to_thread)",
            )
        },
        [
            Goal("/announcements / this service's cached /github/repos", ours_read / ours_hit, 0.8),
            Goal("this service / FastAPI (sync def endpoint)", ours_read / rps["FastAPI /announcements (sync def)"], 4.0),
        ],
        [
            (
                "This service answers public reads from pre-encoded views in memory, checked against the database's "
                "change counter once a second; the bench-only variant without the read cache shows the thread-pool path "
                f"({ours_read / rps['this service /announcements, read cache off (bench-only variant)']:.1f}× slower here)."
            ),
            "The peers read SQLite in a worker thread on every request and answer 5 of the 9 fields (smaller bodies).",
        ],
    )
    s10 = Outcome(
        "10. Cost of metrics: METRICS_TOKEN set (prometheus_client multiprocess mode) vs unset (64 connections)",
        {
            k: series[k]
            for k in (
                "this service /health",
                "this service /health, metrics on",
                "this service /github/repos (hit)",
                "this service /github/repos (hit), metrics on",
            )
        },
        [
            Goal("/health, metrics on / off", rps["this service /health, metrics on"] / ours_health, 0.9),
            Goal("cached /github/repos, metrics on / off", rps["this service /github/repos (hit), metrics on"] / ours_hit, 0.9),
        ],
        [
            (
                "With metrics on, every request is counted by method, route template and status and timed in a histogram; "
                "counts are summed in plain Python and written to prometheus_client's files every 50 ms."
            )
        ],
    )
    by_id = rps["this service /announcements/2 (by id)"]
    s13 = Outcome(
        "13. Content reads: feeds and an announcement by slug, from memory (64 connections, SQLite)",
        {
            k: series[k]
            for k in (
                "this service /github/repos (hit)",
                "this service /announcements (read cache)",
                "this service /announcements/feed.atom",
                "this service /announcements/feed.json",
                "this service /announcements/2 (by id)",
                "this service /announcements/slug/announcement-1",
            )
        },
        [
            Goal("/announcements (with body_html) / cached /github/repos", ours_read / ours_hit, 0.8),
            Goal("feed.atom / cached /github/repos", rps["this service /announcements/feed.atom"] / ours_hit, 0.8),
            Goal("feed.json / cached /github/repos", rps["this service /announcements/feed.json"] / ours_hit, 0.8),
            Goal("by slug / by id", rps["this service /announcements/slug/announcement-1"] / by_id, 0.8),
        ],
        ["Feeds (the 20 newest, HTML content included) and single announcements are pre-encoded views of the read cache."],
    )
    return [s1, s2, s8, s10, s13]


def compressed_cache_hit(env: dict[str, object], profile: Profile) -> list[Outcome]:
    """Scenario 7: a cached 100-repository list asked for with Accept-Encoding: br, gzip."""
    accept = {"Accept-Encoding": "br, gzip"}
    with server("upstream, 100 repositories", uvicorn("bench.upstream:app"), {"BENCH_UPSTREAM_REPOS": "100"},
                cpu=harness.LOAD_CPU, ready_path="/users/octo-dev") as upstream:  # fmt: skip
        peer_env = {**_peer_env(env), "GITHUB_API_URL": upstream.url}
        with (
            # A database of its own: the shared GitHub tier of the others' database holds the 30-repository list.
            server(
                "ours",
                harness.PROCFILE,
                {**env["ours_env"], "GITHUB_API_URL": upstream.url, "DATABASE_URL": f"sqlite:///{env['workdir']}/bench-100.db"},
            ) as ours,  # fmt: skip
            server("fastapi+gzip", uvicorn("bench.peers.fastapi_gzip:app"), peer_env) as fastapi,
            server("litestar+gzip", uvicorn("bench.peers.litestar_app:gzip_app"), peer_env) as litestar,
        ):
            path = "/github/repos?limit=100&forks=true"  # forks too, so every contender answers all 100
            sizes = {}
            for name, peer in (
                ("this service", ours),
                ("FastAPI + GZipMiddleware", fastapi),
                ("Litestar, gzip compression", litestar),
            ):
                plain = httpx.get(peer.url + path, headers={"Accept-Encoding": "identity"}, timeout=10)
                with httpx.stream("GET", peer.url + path, headers=accept, timeout=10) as packed:
                    body = b"".join(packed.iter_raw())
                    coding = packed.headers.get("content-encoding")
                if coding not in ("br", "gzip") or len(plain.json()) != 100:
                    raise RuntimeError(f"{name} did not compress {path}: {coding}, {len(plain.json())} items")
                sizes[name] = (len(plain.content), coding, len(body))
            targets = {
                "this service, identity": f"{ours.url}{path}",
                "this service, br": f"{ours.url}{path}",
                "FastAPI + GZipMiddleware (gzip 9)": f"{fastapi.url}{path}",
                "Litestar with gzip compression (gzip 9)": f"{litestar.url}{path}",
            }
            headers = {label: accept for label in targets if label != "this service, identity"}
            series = harness.compare(targets, rounds=profile.rounds, seconds=profile.seconds, warmup=profile.warmup,
                                     connections=64, headers=headers)  # fmt: skip
    rps = {label: s.rps for label, s in series.items()}
    ours_br = rps["this service, br"]
    return [
        Outcome(
            "7. GET /github/repos?limit=100 (forks included), cache hit, Accept-Encoding: br, gzip (64 connections)",
            series,
            [
                Goal("compressed / identity (this service)", ours_br / rps["this service, identity"], 0.9),
                Goal("this service / FastAPI + GZipMiddleware", ours_br / rps["FastAPI + GZipMiddleware (gzip 9)"], 8.0),
                Goal(
                    "this service / Litestar with gzip compression", ours_br / rps["Litestar with gzip compression (gzip 9)"], 8.0
                ),
            ],
            [
                (
                    "This service compresses each cached view once, the first time a client asks for a coding, and keeps the bytes; "
                    "the peers compress every answer. Litestar's response cache is off in its compression peer: it keys on path "
                    "and query only and would replay gzip bytes to clients that did not ask for them."
                )
            ],
            table=[
                ("Contender", "identity bytes", "coding sent", "bytes sent"),
                *[(name, f"{plain:,}", coding, f"{packed:,}") for name, (plain, coding, packed) in sizes.items()],
            ],
        )
    ]


DISTINCT_NAMES_LUA = """
-- A repository name never asked for before, every request: a prefix new with each run of wrk (from the
-- kernel), then a counter. The stand-in answers any unlisted-* name after its delay.
local prefix, n = "", 0
function init(args)
  local source = io.open("/proc/sys/kernel/random/uuid")
  prefix = source:read("*l")
  source:close()
end
function request()
  n = n + 1
  return wrk.format("GET", "/github/repos/unlisted-" .. prefix .. "-" .. n)
end
"""

UPSTREAM_DELAY = 0.1  # seconds, as environment() starts the stand-in
FLASK_WORKERS = 4  # as the seeds ran it: gunicorn, sync workers


def cache_disabled(env: dict[str, object], profile: Profile) -> list[Outcome]:
    """Scenario 3: the async gain while waiting on I/O, with every request waiting for the 100 ms upstream.

    No answer may come from a copy. This service runs with GITHUB_CACHE_TTL=0 and GITHUB_STALE_TTL=0 (a
    stale window would answer at once from the last copy, which is how an earlier version of this scenario
    reported 21,000 req/s where 64 connections over 100 ms allow 640); a second row asks for a repository
    name never asked before on every request, so neither a copy nor a call in flight for another request
    can answer it. The peers call GitHub on every request. The stand-in counts the calls it answers, so the
    report shows how many of the requests served really reached it, and each figure stands beside its
    ceiling: concurrent requests (connections, or Flask's workers) / 0.1 s.
    """
    upstream = env["upstream"]
    connections = 64
    no_copies = {**env["ours_env"], "GITHUB_CACHE_TTL": "0", "GITHUB_STALE_TTL": "0"}
    every_name = uvicorn("bench.variants:unbudgeted_app") + ["--factory", "--http", UVICORN_HTTP]
    gunicorn = [str(harness.BIN / "gunicorn"), "-w", str(FLASK_WORKERS), "-k", "sync", "-b", "127.0.0.1:{port}",
                "--log-level", "warning", "bench.peers.flask_app:app"]  # fmt: skip
    names = harness.lua_script(DISTINCT_NAMES_LUA)
    ours_label = "this service /github/repos (TTL 0, stale TTL 0)"
    names_label = "this service /github/repos/{name}, a new name each request (unknown-name budget off)"
    fastapi_label = "FastAPI /github/repos (async httpx, TTL 0)"
    flask_label = f"Flask + gunicorn ({FLASK_WORKERS} sync workers)"
    with (
        server("ours, no copies", harness.PROCFILE, no_copies) as ours,
        server("ours, every name looked up", every_name, dict(env["ours_env"])) as ours_names,
        server("fastapi", uvicorn("bench.peers.fastapi_app:app"), _peer_env(env, GITHUB_CACHE_TTL="0")) as fastapi,
        server("flask", gunicorn, _peer_env(env)) as flask,
    ):
        contenders = {ours_label: (ours, None), names_label: (ours_names, names), fastapi_label: (fastapi, None),
                      flask_label: (flask, None)}  # fmt: skip
        concurrent = {label: connections for label in contenders} | {flask_label: min(connections, FLASK_WORKERS)}
        series = {label: Series(label) for label in contenders}
        calls, cpu = dict.fromkeys(contenders, 0), dict.fromkeys(contenders, 0.0)
        labels = list(contenders)
        for round_ in range(profile.rounds):  # alternated as harness.compare does, counting calls and CPU per run
            for label in labels if round_ % 2 == 0 else reversed(labels):
                target, script = contenders[label]
                url = f"{target.url}/github/repos"  # the script, where there is one, names the path
                if profile.warmup:
                    harness.wrk(url, connections=connections, seconds=profile.warmup, script=script)
                calls_before, cpu_before = _quiet_upstream(upstream), target.cpu_seconds()
                series[label].runs.append(harness.wrk(url, connections=connections, seconds=profile.seconds, script=script))
                calls[label] += _upstream_calls(upstream) - calls_before
                cpu[label] += target.cpu_seconds() - cpu_before
                _quiet_upstream(upstream)
    measured = profile.rounds * max(1, round(profile.seconds))  # seconds of wrk per contender
    rows, per_call = [], {}
    for label, s in series.items():
        served = sum(m.requests for m in s.runs)
        ceiling = concurrent[label] / UPSTREAM_DELAY
        per_call[label] = calls[label] / max(1, served)
        who = f"{concurrent[label]} workers" if label == flask_label else f"{connections} connections"
        rows.append((label, f"{s.rps:,.0f}", f"{who} / 0.1 s = {ceiling:,.0f} req/s", f"{s.rps / ceiling:.0%}", f"{served:,}",
                     f"{calls[label]:,}", f"{per_call[label]:.2f}", f"{cpu[label] / max(1, served) * 1e3:.2f} ms",
                     f"{cpu[label] / measured:.0%}"))  # fmt: skip
    ours_rps, names_rps = series[ours_label].rps, series[names_label].rps
    # What the server spends its CPU on, for a row that is CPU-bound below its ceiling.
    work = {
        ours_label: "the single-flight refresh, its two shared-tier writes (SQLite, in the thread pool) and the 304 revalidation",
        names_label: "the name's lookup and its lease and copy written to the shared tier (SQLite, in the thread pool)",
        fastapi_label: "Pydantic validating the 30 repositories from httpx's response.json() and again through "
        "response_model, and httpx, whose cost a request grew with the number in flight in a separate check: about "
        "2.5 ms a request at 32 connections; not profiled further",
        flask_label: "requests and jsonify in 4 processes sharing one core",
    }
    below = []
    for label, s in series.items():
        ceiling = concurrent[label] / UPSTREAM_DELAY
        if s.rps >= 0.8 * ceiling:
            continue
        busy = cpu[label] / measured
        ms = cpu[label] / max(1, sum(m.requests for m in s.runs)) * 1e3
        if busy >= 0.8:
            below.append(
                f"{label} reaches {s.rps / ceiling:.0%} of its ceiling because its server runs out of CPU, not of waiting "
                f"room: its core was {busy:.0%} busy, {ms:.1f} ms a request ({work[label]}), so one core gives it about "
                f"{1000 / max(ms, 1e-9):,.0f} req/s."
            )
        elif label == ours_label:
            below.append(
                f"{label} reaches {s.rps / ceiling:.0%} of its ceiling with its core only {busy:.0%} busy: each request "
                f"waits for a refresh, p50 {s.p50_ms:.0f} ms (the upstream's 100 ms, and the refresh's claim and "
                f"confirmation in the shared tier), and some for two, p99 {s.p99_ms:.0f} ms."
            )
        else:
            below.append(
                f"{label} reaches {s.rps / ceiling:.0%} of its ceiling with its core only {busy:.0%} busy "
                f"({ms:.1f} ms a request): it is held up elsewhere than the CPU (p50 {s.p50_ms:,.0f} ms, "
                f"p99 {s.p99_ms:,.0f} ms)."
            )
    flask_ceiling = concurrent[flask_label] / UPSTREAM_DELAY
    return [
        Outcome(
            f"3. Cache disabled, every request waits for the upstream's 100 ms ({connections} connections)",
            series,
            [
                Goal(
                    f"/github/repos, no copies: req/s vs 0.85 × {connections} / 0.1 s",
                    ours_rps,
                    0.85 * connections / UPSTREAM_DELAY,
                    unit=" req/s",
                ),
                Goal(
                    "/github/repos/{name}, a new name each request: req/s vs the same",
                    names_rps,
                    0.85 * connections / UPSTREAM_DELAY,
                    unit=" req/s",
                ),
                Goal(
                    "upstream calls per request served, least of the rows that share no call",
                    min(per_call[label] for label in (names_label, fastapi_label, flask_label)),
                    0.9,
                ),
            ],
            [
                (
                    f"The ceiling is concurrent requests / 0.1 s: no request can be answered before the stand-in's 100 ms, so "
                    f"{connections} connections allow at most {connections / UPSTREAM_DELAY:,.0f} req/s, and Flask's "
                    f"{FLASK_WORKERS} sync workers, each holding one request for the whole wait, {flask_ceiling:,.0f}."
                ),
                (
                    f"This service with GITHUB_CACHE_TTL=0 and GITHUB_STALE_TTL=0 keeps no copy it may answer from, so every "
                    f"request waits for an upstream answer (p50 {series[ours_label].p50_ms:.0f} ms). Requests for the one key "
                    f"arriving while its call is in flight wait for that call (single-flight, by design), so the stand-in saw "
                    f"{per_call[ours_label]:.2f} calls per request served: about {1 / max(per_call[ours_label], 1e-9):.0f} "
                    f"requests shared each call."
                ),
                (
                    f"The row with a new name each request shares nothing: {per_call[names_label]:.2f} calls per request (the "
                    f"list it looks the name up in stays cached, as with any TTL). It runs a bench-only variant "
                    f"(bench.variants:unbudgeted_app) whose unknown-name budget is unlimited; the service looks up at most 5 "
                    f"unlisted names, then one every 2 minutes, to spare GitHub's rate limit. Each such request also writes "
                    f"the name's lease and copy to the shared tier (SQLite)."
                ),
                f"FastAPI calls GitHub on every request: {per_call[fastapi_label]:.2f} calls per request.",
                *below,
                (
                    f"Flask: {FLASK_WORKERS} sync workers / 0.1 s = {flask_ceiling:,.0f} req/s at best; the other "
                    f"{connections - FLASK_WORKERS} connections queue (p50 {series[flask_label].p50_ms:,.0f} ms)."
                ),
                (
                    "Calls are counted by the stand-in from the start of each measured run to its end, requests served by "
                    "wrk; a run starts once the server has worked through everything the one before left queued (Flask's "
                    "backlog of abandoned requests held a run of an earlier version of this scenario to 6 req/s). The "
                    "requests still waiting when wrk stops (up to 64 a run, 4 for Flask) were called but not served, so "
                    "a row that shares no call reads a little above 1.00."
                ),
            ],
            table=[
                (
                    "Contender",
                    "measured req/s",
                    "ceiling",
                    "of ceiling",
                    "requests served",
                    "upstream calls",
                    "calls per request",
                    "server CPU per request",
                    "server CPU busy",
                ),
                *rows,
            ],
        )
    ]


def _upstream_calls(upstream: object) -> int:
    return int(httpx.get(f"{upstream.url}/_calls").text)


def _quiet_upstream(upstream: object, *, quiet: float = 0.3, limit: float = 10.0) -> int:
    """The stand-in's call count once no call has come for `quiet` seconds (at most `limit`): the server
    has worked through every request it had accepted. When wrk stops, a sync server still holds the
    requests queued in its listen backlog, and answers them to closed sockets: measured straight after a
    warm-up, Flask spent most of a 2 s run on the warm-up's 60 abandoned requests and read 6 req/s."""
    give_up_at = time.monotonic() + limit
    count = _upstream_calls(upstream)
    while time.monotonic() < give_up_at:
        time.sleep(quiet)
        now = _upstream_calls(upstream)
        if now == count:
            break
        count = now
    return count


SLOW_READERS_LUA = """
-- 32 connections each reading /announcements every 50 ms: steady background load, not a flood.
request = function() return wrk.format("GET", "/announcements") end
delay = function() return 50 end
"""


def event_loop_never_blocked(env: dict[str, object], profile: Profile) -> list[Outcome]:
    """Scenario 4: /health p99 alone vs while 32 connections read announcements from SQLite."""
    readers = harness.lua_script(SLOW_READERS_LUA)
    rows: dict[str, Series] = {}
    ratios = {}
    for label, app in (("this service", "service.app:app"),
                       ("read cache off, store read in the thread pool (bench-only variant)", "bench.variants:uncached_app"),
                       ("store read inside async def (bench-only variant)", "bench.variants:blocking_app")):  # fmt: skip
        argv = uvicorn(app) + (["--factory"] if "variants" in app else [])
        with server(label, argv, dict(env["ours_env"])) as target:
            idle = Series(f"{label}: /health idle")
            loaded = Series(f"{label}: /health with 32 readers")
            for _ in range(profile.tail_rounds):
                if profile.warmup:
                    harness.wrk(f"{target.url}/health", connections=4, seconds=profile.warmup)
                idle.runs.append(harness.wrk(f"{target.url}/health", connections=4, seconds=profile.tail_seconds))
                background = _background_wrk(target.url, readers, profile.tail_seconds + 2)
                time.sleep(1)
                loaded.runs.append(harness.wrk(f"{target.url}/health", connections=4, seconds=profile.tail_seconds))
                background.wait(timeout=profile.tail_seconds + 30)
            rows[idle.label], rows[loaded.label] = idle, loaded
            ratios[label] = loaded.p99_ms / idle.p99_ms
    return [
        Outcome(
            "4. Event loop never blocked: /health p99 while 32 connections read /announcements (SQLite)",
            rows,
            [Goal("this service: loaded p99 / idle p99", ratios["this service"], 2.0, higher_is_better=False)],
            [
                (
                    "This service answers the readers from its read cache; the variant with the read cache off keeps every read on "
                    f"the thread-pool path this scenario was written for: its loaded p99 / idle p99 is "
                    f"{ratios['read cache off, store read in the thread pool (bench-only variant)']:.2f}×."
                ),
                (
                    f"The failure mode it prevents: with the store read done directly inside async def, /health p99 grows "
                    f"{ratios['store read inside async def (bench-only variant)']:.1f}× under the same load."
                ),
                "Both /health load generators use 4 connections; the readers each ask every 50 ms (about 640 req/s in all).",
                (
                    "An indexed SQLite read of 20 rows takes about 0.1 ms, so doing it on the loop costs little here; the test "
                    "suite's deliberately slow (1 s) store read shows what offloading prevents."
                ),
            ],
        )
    ]


def _background_wrk(url: str, script: Path, seconds: float) -> subprocess.Popen[bytes]:
    argv = ["taskset", "-c", harness.LOAD_CPU, "wrk", "-t1", "-c32", f"-d{round(seconds)}s", "-s", str(script), url]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def decoding(profile: Profile) -> list[Outcome]:
    """Scenario 5: decode a 100-repository payload, in process."""
    import msgspec
    from pydantic import TypeAdapter

    from bench.peers.fastapi_app import Repository as PydanticRepository
    from service.github.models import Repository
    from tests.fixtures.make_repos import make

    payload = json.dumps(make("octo-dev", 100)).encode()
    decoder = msgspec.json.Decoder(list[Repository])
    adapter = TypeAdapter(list[PydanticRepository])
    contenders = {
        "msgspec Decoder(list[Repository]).decode(bytes)": lambda: decoder.decode(payload),
        "Pydantic TypeAdapter.validate_json(bytes)": lambda: adapter.validate_json(payload),
        "json.loads + Pydantic model per item (the seed stack)": lambda: [PydanticRepository(**r) for r in json.loads(payload)],
    }
    number = 20 if profile is SMOKE else 300
    times = {}
    for label, work in contenders.items():
        work()
        times[label] = min(timeit.repeat(work, number=number, repeat=5)) / number
    fastest = times["msgspec Decoder(list[Repository]).decode(bytes)"]
    table = [(label, f"{seconds * 1e6:,.0f} µs", f"{seconds / fastest:.1f}×") for label, seconds in times.items()]
    return [
        Outcome(
            f"5. Decoding a 100-repository GitHub payload ({len(payload) / 1024:.0f} KiB), in process",
            table=[("Decoder", "time per payload", "relative to msgspec"), *table],
            notes=["Best of 5 repeats; both decoders keep only the 17 fields the service uses."],
        )
    ]


def search(profile: Profile) -> list[Outcome]:
    """Scenario 14: full-text search over 10,000 announcements on SQLite (FTS5), against a LIKE '%word%' scan of
    the same rows, in process through the store."""
    import random
    import sqlite3
    import statistics

    from service.announcements.models import NewAnnouncement, search_words
    from service.announcements.store import AnnouncementStore
    from service.database import open_database

    count = 500 if profile is SMOKE else 10_000
    rng = random.Random(14)
    # A word is in about 24 of 10,000 posts: a search names something specific, so a scan cannot stop early.
    vocabulary = [f"word{n}" for n in range(50_000)] + ["håndtering", "blokkerende", "kode"]
    workdir = Path(tempfile.mkdtemp(prefix="website-api-search-"))
    database = open_database(f"sqlite:///{workdir}/search.db")
    database.open()
    database.migrate()
    store = AnnouncementStore(database)
    now = datetime.datetime.now(datetime.UTC)
    for n in range(count):
        body = " ".join(rng.choice(vocabulary) for _ in range(120))
        store.create(NewAnnouncement(title=f"Post {n} {rng.choice(vocabulary)}", body=body), now=now)
    queries = [rng.choice(vocabulary) for _ in range(50 if profile is SMOKE else 400)]

    def timed(run: Callable[[str], object]) -> list[float]:
        times = []
        for word in queries:
            started = time.perf_counter()
            run(word)
            times.append(time.perf_counter() - started)
        return times

    fts = timed(lambda word: store.search(search_words(word), now=now, limit=20, tag=None, include_all=False))
    with sqlite3.connect(workdir / "search.db") as scan:
        like = timed(
            lambda word: scan.execute(
                "SELECT * FROM announcements WHERE title LIKE ? OR summary LIKE ? OR body LIKE ? ORDER BY id DESC LIMIT 20",
                (f"%{word}%",) * 3,
            ).fetchall()
        )
    database.close()
    shutil.rmtree(workdir, ignore_errors=True)

    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1]

    table = [
        ("Query", "p50", "p99"),
        ("FTS5 through the store (20 best, rows decoded)", f"{p(fts, 50) * 1e3:.2f} ms", f"{p(fts, 99) * 1e3:.2f} ms"),
        ("LIKE '%word%' over title, summary, body (same rows)", f"{p(like, 50) * 1e3:.2f} ms", f"{p(like, 99) * 1e3:.2f} ms"),
    ]
    return [
        Outcome(
            f"14. Search over {count:,} announcements on SQLite, in process",
            table=table,
            goals=[
                Goal("LIKE scan / FTS5, p50", p(like, 50) / p(fts, 50), 10.0),
                Goal("LIKE scan / FTS5, p99", p(like, 99) / p(fts, 99), 10.0),
            ],
            notes=[
                f"{len(queries)} one-word queries drawn from a vocabulary of 50,003 words, bodies of 120 words: each word "
                "is in a few dozen posts, as a search for something specific is. FTS5 ranks every match (bm25) and the "
                "store decodes the 20 best; the scan stops at 20 matches, newest first, or reads every row."
            ],
        )
    ]


def compression_costs(profile: Profile) -> list[Outcome]:
    """Scenario 9: what each compression setting costs and saves, in process; the threshold; start-up."""
    import gzip

    import brotli
    import msgspec

    from service import docs, encoding
    from service.github.models import Repository, RepositoryQuery, select
    from tests.fixtures.make_repos import make

    repos = msgspec.json.decode(json.dumps(make("octo-dev", 100)).encode(), type=list[Repository])
    body = msgspec.json.encode(select(repos, RepositoryQuery(limit=100)))
    number = 3 if profile is SMOKE else 20

    def best(work: Callable[[], object]) -> float:
        return min(timeit.repeat(work, number=1, repeat=number))

    settings = {
        f"gzip level {encoding.GZIP_LEVEL} (this service)": lambda: gzip.compress(body, encoding.GZIP_LEVEL, mtime=0),
        "gzip level 9 (GZipMiddleware's and Litestar's default)": lambda: gzip.compress(body, 9, mtime=0),
        f"brotli quality {encoding.BROTLI_QUALITY} (this service)": lambda: brotli.compress(
            body, quality=encoding.BROTLI_QUALITY
        ),
        "brotli quality 11 (its best)": lambda: brotli.compress(body, quality=11),
    }
    rows = [
        (name, f"{len(work()):,} B", f"{len(body) / len(work()):.1f}×", f"{best(work) * 1e3:.2f} ms")
        for name, work in settings.items()
    ]
    lazy = best(lambda: encoding.EncodedBody(body).form("br"))
    eager = best(lambda: encoding.EncodedBody(body).compress_all())
    rows += [("first br request for a view: lazy (br only)", "", "", f"{lazy * 1e3:.2f} ms"),
             ("first request for a view: eager (br and gzip)", "", "", f"{eager * 1e3:.2f} ms")]  # fmt: skip
    started = time.perf_counter()
    docs._static_answers.__wrapped__()
    static = time.perf_counter() - started
    rows.append(("static answers at start-up (spec, Swagger UI assets, both codings)", "", "", f"{static * 1e3:.0f} ms"))
    small = []
    for count in (1, 2, 3, 5):  # real answers of about 0.4, 0.8, 1.2 and 2 KB: one to five repositories
        sample = msgspec.json.encode(select(repos, RepositoryQuery(limit=count, forks=True)))
        br, gz = len(encoding.compress(sample, "br")), len(encoding.compress(sample, "gzip"))
        small.append((f"{count} repositories", f"{len(sample):,} B", f"br {br:,} B, gzip {gz:,} B",
                      f"saves {len(sample) - br:,} B"))  # fmt: skip
    return [
        Outcome(
            f"9. Compression, in process: a {len(body) / 1024:.0f} KiB answer (100 repositories), start-up, small bodies",
            table=[("Setting or step", "size", "ratio", "time (best of runs)"), *rows, *small],
            notes=[
                (
                    "Views are compressed lazily, one coding at a time, the first time a client asks for it: a coding no "
                    "client asks for costs nothing, and the first request pays for one coding, not both."
                ),
                (
                    "Below 1 KiB a body and its headers (about 300 bytes) fit in one TCP segment compressed or not, so "
                    "bodies under MIN_COMPRESSED_SIZE are sent as they are."
                ),
            ],
        )
    ]


def memory(env: dict[str, object], profile: Profile) -> list[Outcome]:
    """Scenario 6: RSS of one worker after 200,000 mixed requests."""
    script = ROOT / "tests" / "load" / "soak.lua"
    with server("ours", harness.PROCFILE, dict(env["ours_env"])) as ours:
        httpx.get(f"{ours.url}/github/repos", timeout=10)
        start = ours.rss_kib()
        half = profile.memory_requests // 2
        done, halfway, rounds = 0, None, 0
        while done < profile.memory_requests and rounds < 40:
            done += harness.wrk(ours.url, connections=32, seconds=2 if profile is SMOKE else 10, script=script).requests
            rounds += 1
            if halfway is None and done >= half:
                halfway = ours.rss_kib()
        end = ours.rss_kib()
    halfway = halfway or end
    return [
        Outcome(
            f"6. Memory of one worker over {done:,} mixed requests",
            table=[
                ("Point", "RSS"),
                ("after start-up and one GitHub fetch", f"{start / 1024:.1f} MB"),
                (f"after {half:,}+ requests", f"{halfway / 1024:.1f} MB"),
                (f"after {done:,} requests", f"{end / 1024:.1f} MB"),
            ],
            goals=[
                Goal("RSS after all requests", end / 1024, 60.0, higher_is_better=False, unit=" MB"),
                Goal("growth over the second half", (end - halfway) / 1024, 2.0, higher_is_better=False, unit=" MB"),
            ],
            notes=["Mix: /health, cached /github/repos, /announcements, and bad inputs (422, 401, 400, 404)."],
        )
    ]


def time_per_request(env: dict[str, object], profile: Profile) -> list[Outcome]:
    """Scenario 11: microseconds of Python per request, in process (bench.inprocess): where the time goes."""
    ours = dict(env["ours_env"])
    peers = _peer_env(env)
    contenders = [
        ("raw ASGI", "bench.peers.raw_asgi:app", "/health", {}),
        ("bare Starlette", "bench.peers.starlette_floor:app", "/health", {}),
        ("Litestar", "bench.peers.litestar_app:app", "/health", peers),
        ("this service without its own middleware (bench-only variant)", "bench.variants:edgeless_app", "/health", ours),
        ("this service, ACCESS_LOG=false", "service.app:app", "/health", {**ours, "ACCESS_LOG": "false"}),
        ("this service", "service.app:app", "/health", ours),
        ("Litestar (response cache hit)", "bench.peers.litestar_app:app", "/github/repos", peers),
        ("this service without its own middleware (bench-only variant)", "bench.variants:edgeless_app", "/github/repos", ours),
        ("this service (hit)", "service.app:app", "/github/repos", ours),
    ]
    requests = 2_048 if profile is SMOKE else 19_200
    counted = 640 if profile is SMOKE else 2_560  # under callgrind, about 50 times slower
    counting = shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None
    measured = []
    with tempfile.TemporaryDirectory() as scratch:
        for n, (label, app, path, extra) in enumerate(contenders):
            full_env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "PYTHONHASHSEED": "0",
                **{k: v for k, v in extra.items() if k != "PORT"},
            }
            us = _in_process(Path(scratch) / str(n), app, path, requests, full_env, str(env["workdir"]))
            instructions = (
                _instructions(Path(scratch) / f"{n}i", app, path, counted, full_env, str(env["workdir"])) if counting else 0.0
            )
            measured.append((label, path, us, instructions))
    floor = next(us for label, path, us, _ in measured if label == "bare Starlette")
    floor_ir = next(ir for label, path, _, ir in measured if label == "bare Starlette")
    table = [(label, path, f"{us:.1f} µs", f"{floor / us:.2f}×",
              f"{ir / 1000:.1f} k" if ir else "–", f"{floor_ir / ir:.3f}×" if ir and floor_ir else "–")
             for label, path, us, ir in measured]  # fmt: skip
    by = {(label, path): (us, ir) for label, path, us, ir in measured}
    lean = by[("this service, ACCESS_LOG=false", "/health")]
    edgeless = by[("this service without its own middleware (bench-only variant)", "/health")]
    full = by[("this service", "/health")]
    notes = [
        (
            "uvicorn's own HTTP/1.1 protocol answers 64 keep-alive connections through an in-memory transport: parsing, "
            "the app and header writing, without the kernel's share. That share is the same for every contender, yet "
            "this service's ratios over real sockets (scenarios 1 and 2) have come out lower than these, not closer to 1: "
            "beside the kernel's work, a longer Python path also runs at fewer instructions a cycle. Read these as what "
            "each contender's Python costs, not as throughput."
        ),
        (
            f"The service's middleware without the access line cost {lean[0] - edgeless[0]:.1f} µs a request here (request id, trace "
            f"ids, deadline, the two headers it adds); the JSON access line {full[0] - lean[0]:.1f} µs more."
        ),
        "Time: best of 5 repeats per contender, each in its own process pinned to the servers' core.",
    ]
    if counting:
        notes.append(
            f"Instructions: the same requests ({counted:,} a contender) under valgrind's callgrind, counted on the event "
            "loop's thread only, from the first request to the last (bench.inprocess --instructions). Unlike the times, "
            "these counts repeat to within a few tenths of a percent run after run, however busy the machine. "
            f"The service's middleware cost {(lean[1] - edgeless[1]) / 1000:.1f} k instructions, the access line "
            f"{(full[1] - lean[1]) / 1000:.1f} k."
        )
    else:
        notes.append("Instructions: not counted, valgrind is not installed.")
    return [
        Outcome(
            "11. Where the time goes: Python per request, in process (uvicorn's HTTP protocol, no sockets)",
            table=[
                ("Contender", "path", "per request", "bare Starlette /health = 1", "instructions", "bare Starlette /health = 1"),
                *table,
            ],
            notes=notes,
        )
    ]


def _options(app: str) -> list[str]:
    """bench.inprocess's options for `app`: this service runs with the connection protocol its Procfile uses."""
    ours = not app.startswith("bench.peers.")
    return [*(["--factory"] if app.startswith("bench.variants") else []), *(["--http", UVICORN_HTTP] if ours else [])]


def _in_process(out: Path, app: str, path: str, requests: int, env: dict[str, str], cwd: str) -> float:
    """Microseconds per request (best of 5 repeats)."""
    argv = ["taskset", "-c", harness.SERVER_CPU, str(harness.BIN / "python"), "-m", "bench.inprocess", str(out), app, path,
            "--requests", str(requests), *_options(app)]  # fmt: skip
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, check=True, timeout=300)
    result = json.loads(out.read_text())
    if result["status"] != 200:
        raise RuntimeError(f"{app} {path} answered {result['status']}")
    return float(result["us"])


def _instructions(out: Path, app: str, path: str, requests: int, env: dict[str, str], cwd: str) -> float:
    """Instructions per request on the event loop's thread (callgrind's first thread file); 0 where
    valgrind is missing."""
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes", f"--callgrind-out-file={out}.cg",
            str(harness.BIN / "python"), "-m", "bench.inprocess", str(out), app, path, "--requests", str(requests), "--instructions",
            *_options(app)]  # fmt: skip
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=600)
    result = json.loads(out.read_text())
    if result["status"] != 200:
        raise RuntimeError(f"{app} {path} answered {result['status']} under callgrind")
    totals = re.search(r"^totals: (\d+)", Path(f"{out}.cg-01").read_text(), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"no totals in callgrind's output for {app} {path}")
    return int(totals[1]) / int(result["requests"])


# `python -m bench --only NAME|NUMBER ...`: each function below gives the scenarios numbered beside it,
# and runs when any of them (or its name) is asked for.
SELECTABLE = {
    "side-by-side": ("1", "2", "8", "10", "13"),
    "compressed": ("7",),
    "cache-disabled": ("3",),
    "event-loop": ("4",),
    "memory": ("6",),
    "time-per-request": ("11",),
    "decoding": ("5",),
    "compression-costs": ("9",),
    "hostile": ("12",),
    "search": ("14",),
}


def selected(only: set[str] | None, name: str) -> bool:
    return only is None or name in only or not only.isdisjoint(SELECTABLE[name])


def everything(profile: Profile, only: set[str] | None = None) -> tuple[list[Outcome], dict[str, str]]:
    """Every scenario, or those `only` names (by name or number)."""
    from bench.hostile import hostile_mix  # it builds on this module's Outcome and Goal

    harness.require_tools()
    outcomes: list[Outcome] = []
    with_env = [
        ("side-by-side", side_by_side),
        ("compressed", compressed_cache_hit),
        ("cache-disabled", cache_disabled),
        ("event-loop", event_loop_never_blocked),
        ("memory", memory),
        ("time-per-request", time_per_request),
    ]
    if any(selected(only, name) for name, _ in with_env):
        with environment(profile) as env:
            for name, scenario in with_env:
                if selected(only, name):
                    outcomes += scenario(env, profile)
    for name, alone in (
        ("decoding", decoding), ("compression-costs", compression_costs), ("hostile", hostile_mix), ("search", search)
    ):  # fmt: skip
        if selected(only, name):
            outcomes += alone(profile)
    outcomes.sort(key=lambda o: o.title)
    return outcomes, harness.machine()
