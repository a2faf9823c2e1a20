from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from service.settings import Settings
from tests.support import app_with_test_routes, assert_problem, running

pytestmark = pytest.mark.anyio


async def test_unknown_path_is_404_problem(client: httpx.AsyncClient) -> None:
    problem = assert_problem(await client.get("/nope"), 404)
    assert problem["type"] == "about:blank" and problem["title"] == "Not Found" and problem["instance"] == "/nope"


async def test_wrong_method_is_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/health")
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, HEAD"


async def test_unexpected_exception_is_generic_500_with_request_id(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with running(app_with_test_routes(make_settings())) as client:
        # The error ends in the service's outermost layer: ASGITransport would re-raise one that escaped.
        response = await client.get("/_test/boom", headers={"X-Request-ID": "trace-me-1"})
    problem = assert_problem(response, 500)
    assert "trace-me-1" in problem["detail"]
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    logged = [r for r in caplog.records if r.name == "service.errors"]
    assert len(logged) == 1 and logged[0].request_id == "trace-me-1" and logged[0].exc_info


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"title": "ok"', "application/json", 400),
        (b"0\x01", "application/json", 400),
        (b"", "application/json", 400),
        (b'{"title": 5, ', "application/json", 400),  # wrong type first, then malformed
        (b'{"title": "\xff\xfe"}', "application/json", 400),  # invalid UTF-8 inside a string
        (b'{"count": 1, "title": "\xc3"}', "application/json", 400),
        (b"[" * 60_000, "application/json", 422),  # nested far too deep
        (b'{"title": "x", "tags": ' + b"[" * 60_000, "application/json", 422),
        (b'{"title": 1e999999}', "application/json", 400),  # beyond what a JSON number can hold here
        (b'{"title": "ok"}', "text/plain", 415),
        (b'{"title": "ok"}', "", 415),
    ],
    ids=lambda value: repr(value)[:40] if isinstance(value, bytes) else None,
)
async def test_bad_bodies_get_clear_problems(
    make_settings: Callable[..., Settings], body: bytes, content_type: str, status: int
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    async with running(app_with_test_routes(make_settings())) as client:
        response = await client.post("/_test/notes", content=body, headers=headers)
    assert_problem(response, status)


async def test_invalid_fields_are_all_listed_in_one_422(make_settings: Callable[..., Settings]) -> None:
    body = {"title": "far too long a title", "count": "3", "tags": ["ok", "NO"], "colour": "red"}
    async with running(app_with_test_routes(make_settings())) as client:
        response = await client.post("/_test/notes", json=body)
    problem = assert_problem(response, 422)
    fields = {e["field"]: e["message"] for e in problem["errors"]}
    assert set(fields) == {"title", "count", "tags[1]", "colour"}
    assert fields["colour"] == "unknown field"
    assert "<= 10" in fields["title"]


async def test_missing_required_field_and_non_object_body(make_settings: Callable[..., Settings]) -> None:
    async with running(app_with_test_routes(make_settings())) as client:
        missing = await client.post("/_test/notes", json={})
        array = await client.post("/_test/notes", json=[1, 2])
    assert assert_problem(missing, 422)["errors"] == [{"field": "title", "message": "required"}]
    assert assert_problem(array, 422)["errors"][0]["field"] == "$"


async def test_valid_body_is_decoded(make_settings: Callable[..., Settings]) -> None:
    async with running(app_with_test_routes(make_settings())) as client:
        response = await client.post("/_test/notes", json={"title": "hi", "tags": ["a"]})
    assert response.status_code == 200 and response.json() == {"title": "hi", "count": 0, "tags": ["a"]}


async def test_a_malformed_body_is_described_with_its_acronym_intact(make_settings: Callable[..., Settings]) -> None:
    async with running(app_with_test_routes(make_settings())) as client:
        response = await client.post("/_test/notes", content=b'{"title" 1}', headers={"content-type": "application/json"})
    detail = assert_problem(response, 400)["detail"]
    assert "JSON is malformed" in detail and "jSON" not in detail
