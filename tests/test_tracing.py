"""W3C trace context: accepted when valid, a new trace otherwise; carried into log lines and GitHub calls;
exported over OTLP/HTTP only when configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from service.app import create_app
from service.settings import Settings
from service.tracing import new_trace, otel_or_exit, parse_traceparent
from tests.github_standin import GitHubStandIn
from tests.otlp_receiver import OtlpReceiver
from tests.support import ROOT, running

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

INVALID = [
    "",
    "garbage",
    f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper-case hex
    f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is forbidden
    f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 ends after the flags
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # short trace id
    f"00-{TRACE_ID}-{PARENT_ID}-1",
    f"00_{TRACE_ID}_{PARENT_ID}_01",
    "00-" + "é" * 32 + f"-{PARENT_ID}-01",
]


def test_new_traces_are_valid_w3c_ids_and_do_not_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = [new_trace() for _ in range(1000)]
    assert len({trace_id for trace_id, _ in drawn}) == len({span_id for _, span_id in drawn}) == 1000
    for trace_id, span_id in drawn:
        assert parse_traceparent(f"00-{trace_id}-{span_id}-01".encode()) is not None
    # A draw whose trace id or span id is all zeros (invalid) is thrown away.
    draws = iter([0, 7 << 64, 5 | (7 << 64)])
    monkeypatch.setattr("service.tracing.random.getrandbits", lambda bits: next(draws))
    assert new_trace() == (f"{7:032x}", f"{5:016x}")


def test_valid_traceparents_parse() -> None:
    assert parse_traceparent(TRACEPARENT.encode()) == (TRACE_ID, PARENT_ID, True)
    assert parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-00".encode()) == (TRACE_ID, PARENT_ID, False)
    # A later version may append fields; its first four are read as version 00's.
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-03-whatever".encode()) == (TRACE_ID, PARENT_ID, True)


@pytest.mark.parametrize("value", INVALID)
def test_invalid_traceparents_do_not_parse(value: str) -> None:
    assert parse_traceparent(value.encode()) is None


def access_lines(out: str) -> list[dict]:
    return [line for line in map(json.loads, out.splitlines()) if line.get("logger") == "service.access"]


async def test_incoming_trace_reaches_the_access_line_and_the_github_call(
    make_settings: Callable[..., Settings], standin: GitHubStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(ACCESS_LOG="true", GITHUB_OWNER=standin.owner, GITHUB_API_URL=standin.url)
    async with running(create_app(settings)) as client:
        response = await client.get("/github/repos/project-001", headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
        await anyio.sleep(0.1)  # access lines are flushed in batches
    [line] = [line for line in access_lines(capsys.readouterr().out) if line["path"] == "/github/repos/project-001"]
    assert line["trace_id"] == TRACE_ID and line["request_id"] == response.headers["x-request-id"]
    # A listed repository comes from the owner's list: the calls made for this request are the profile
    # and the list, both carrying the incoming trace.
    calls = standin.calls_to("/users/")
    assert [call.path.split("?")[0] for call in calls] == ["/users/octo-dev", "/users/octo-dev/repos"]
    for call in calls:
        version, trace_id, parent_id, flags = call.headers["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
        assert parent_id != PARENT_ID and len(parent_id) == 16  # this service's own span is the parent of its call
        # No X-Request-ID was sent: the request is known by its span's id, in the header and the log line.
        assert parent_id == response.headers["x-request-id"]


@pytest.mark.parametrize("value", INVALID + [TRACEPARENT + "\t, " + TRACEPARENT])
async def test_an_invalid_traceparent_starts_a_new_trace_and_is_never_an_error(
    make_settings: Callable[..., Settings], standin: GitHubStandIn, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    settings = make_settings(ACCESS_LOG="true", GITHUB_OWNER=standin.owner, GITHUB_API_URL=standin.url)
    async with running(create_app(settings)) as client:
        response = await client.get("/github/owner", headers={"traceparent": value.encode()})
        assert response.status_code == 200
        await anyio.sleep(0.1)
    [line] = access_lines(capsys.readouterr().out)
    assert len(line["trace_id"]) == 32 and line["trace_id"] != TRACE_ID and int(line["trace_id"], 16) != 0
    [call] = standin.calls_to("/users/")
    assert call.headers["traceparent"].split("-")[1] == line["trace_id"]


async def test_two_traceparent_headers_are_invalid(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(create_app(make_settings(ACCESS_LOG="true"))) as client:
        response = await client.get("/health", headers=[("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)])
        assert response.status_code == 200
        await anyio.sleep(0.1)
    assert access_lines(capsys.readouterr().out)[0]["trace_id"] != TRACE_ID


async def test_each_request_without_traceparent_gets_its_own_trace(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(create_app(make_settings(ACCESS_LOG="true"))) as client:
        for _ in range(20):
            await client.get("/health")
        await anyio.sleep(0.1)
    assert len({line["trace_id"] for line in access_lines(capsys.readouterr().out)}) == 20


# -- OpenTelemetry ---------------------------------------------------------------------------


async def test_otlp_export_has_a_server_span_per_route_template_with_a_client_span_for_github(
    make_settings: Callable[..., Settings], standin: GitHubStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    secrets = ("ghp_spanSECRET0123456789", "admin-span-SECRET-0123456789", "metrics-span-SECRET-0123456789")
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        settings = make_settings(GITHUB_OWNER=standin.owner, GITHUB_API_URL=standin.url, GITHUB_TOKEN=secrets[0],
                                 ADMIN_TOKEN=secrets[1], METRICS_TOKEN=secrets[2])  # fmt: skip
        otel = otel_or_exit()
        assert otel is not None
        async with running(create_app(settings, otel=otel)) as client:
            response = await client.get("/github/repos/project-001", headers={"traceparent": TRACEPARENT})
            assert response.status_code == 200
            await client.get("/announcements", headers={"Authorization": f"Bearer {secrets[1]}"})
            await client.get("/metrics", headers={"Authorization": f"Bearer {secrets[2]}"})
        spans = receiver.received()  # the lifespan's end exported every span
    [server] = [s for s in spans if s.name == "GET /github/repos/{name}"]
    assert server.kind == Span.SPAN_KIND_SERVER
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == PARENT_ID
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["http.route"].string_value == "/github/repos/{name}"
    assert attributes["http.response.status_code"].int_value == 200
    children = [s for s in spans if s.parent_span_id == server.span_id]  # the profile and the list
    assert len(children) == 2
    assert all(child.kind == Span.SPAN_KIND_CLIENT and child.trace_id == server.trace_id for child in children)
    sent = sorted(call.headers["traceparent"] for call in standin.calls_to("/users/"))
    assert sent == sorted(f"00-{TRACE_ID}-{child.span_id.hex()}-01" for child in children)  # the upstream sees the client spans
    [listing] = [s for s in spans if s.name == "GET /announcements"]
    assert any(s.name == "store list" and s.parent_span_id == listing.span_id for s in spans)
    assert "GET /metrics" in {s.name for s in spans}
    for span in spans:
        text = str(span)
        assert not any(secret in text for secret in secrets), text


def _run_python(code: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_without_otel_variables_no_opentelemetry_code_is_loaded(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys, httpx\n"
        "from service.app import create_app\n"
        "from service.settings import load_settings\n"
        "from service.tracing import otel_or_exit\n"
        f"app = create_app(load_settings({{'DATABASE_URL': 'sqlite:///{tmp_path}/db.sqlite', 'METRICS_TOKEN': 'x' * 20}}), otel=otel_or_exit())\n"
        "async def main():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url='http://t') as client:\n"
        "            for path in ('/health', '/announcements', '/github/repos', '/nope'):\n"
        f"                await client.get(path, headers={{'traceparent': '{TRACEPARENT}'}})\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""}
    done = _run_python(code, env, tmp_path)
    assert done.returncode == 0, done.stderr
    [loaded] = [line for line in done.stdout.splitlines() if line.startswith("[")]  # the rest are access lines
    assert loaded == "[]"


def test_otel_endpoint_without_the_extra_stops_start_up_with_one_line(tmp_path: Path) -> None:
    # The extra is installed here; hide it the way a plain install would lack it.
    code = (
        "import sys\n"
        "for name in ('opentelemetry.sdk', 'opentelemetry.exporter.otlp.proto.http', 'opentelemetry.instrumentation.httpx'):\n"
        "    sys.modules[name] = None\n"
        "from service.__main__ import main\n"
        "main(['serve'])\n"
    )
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "PORT": "1"}
    done = _run_python(code, env, tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in line and "website-api[otel]" in line
