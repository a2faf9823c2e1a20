"""The hand-written openapi.yaml against the real app, in-process, with every schemathesis check."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

import hypothesis
import pytest
import schemathesis
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.routing import Route

from service.app import create_app
from service.docs import load_spec, spec_path
from service.settings import Settings
from tests.github_standin import GitHubStandIn
from tests.support import CONTRACT_ADMIN_TOKEN, CONTRACT_METRICS_TOKEN, contract_config

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# With a GitHub token the showcase comes from GraphQL; without one, from the repository list: both are checked.
SHOWCASE = ["getPinnedRepositories", "getLanguages"]


def app_for_contract(make_settings: Callable[..., Settings], standin: GitHubStandIn, *, github_token: bool = True) -> Starlette:
    settings = make_settings(
        GITHUB_OWNER=standin.owner,
        GITHUB_API_URL=standin.url,
        GITHUB_TOKEN="contract-github-token-0123456789" if github_token else "",
        ADMIN_TOKEN=CONTRACT_ADMIN_TOKEN,
        METRICS_TOKEN=CONTRACT_METRICS_TOKEN,
        SITE_URL="https://example.com",  # the feeds on, so their 200 answers are checked too
    )
    return create_app(settings)


@pytest.fixture
def api_schema(make_settings: Callable[..., Settings], standin: GitHubStandIn) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_path(str(spec_path()), config=contract_config())
    schema.app = app_for_contract(make_settings, standin)
    return schema


@pytest.fixture
def showcase_without_github_token(make_settings: Callable[..., Settings], standin: GitHubStandIn) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_path(str(spec_path()), config=contract_config())
    schema.app = app_for_contract(make_settings, standin, github_token=False)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")
showcase_schema = schemathesis.pytest.from_fixture("showcase_without_github_token").include(operation_id=SHOWCASE)


@schema.parametrize()
def test_api_conforms_to_contract(case: schemathesis.Case) -> None:
    case.call_and_validate()


@showcase_schema.parametrize()
def test_showcase_without_a_github_token_conforms_to_contract(case: schemathesis.Case) -> None:
    case.call_and_validate()


def test_stateful_links_create_read_update_delete(make_settings: Callable[..., Settings], standin: GitHubStandIn) -> None:
    """POST's links lead to GET/PATCH/DELETE of what it made: use-after-free and resource availability checked."""
    stateful = schemathesis.openapi.from_path(str(spec_path()), config=contract_config())
    stateful.app = app = app_for_contract(make_settings, standin)

    class Workflow(stateful.as_state_machine()):
        def setup(self) -> None:
            """Every example starts from an empty store, so the same example draws the same way twice."""
            announcements = getattr(app.state, "announcements", None)
            if announcements is not None:  # the lifespan has run
                store = announcements.store
                for item in store.list(now=datetime.now(UTC), limit=10_000, tag=None, include_all=True, after=None):
                    store.delete(item.id, if_match=None, now=datetime.now(UTC))
                announcements.views.invalidate(now=datetime.now(UTC))  # as a write through the app would

    test_case = Workflow.TestCase
    test_case.settings = hypothesis.settings(
        test_case.settings, max_examples=50, stateful_step_count=10, derandomize=True, deadline=None
    )
    test_case().runTest()


def _served_methods(route: Route) -> set[str]:
    if isinstance(route.endpoint, type) and issubclass(route.endpoint, HTTPEndpoint):
        return {m for m in ("get", "post", "put", "patch", "delete") if hasattr(route.endpoint, m)}
    return {m.lower() for m in route.methods or () if m != "HEAD"}  # Starlette adds HEAD to every GET


def test_routes_and_spec_operations_match_both_ways(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())
    served = {
        (re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method)
        for route in app.routes
        if isinstance(route, Route)
        for method in _served_methods(route)
    }
    _, spec = load_spec()
    documented = {(path, method) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS}
    assert served - documented == set(), "served but not in openapi.yaml"
    assert documented - served == set(), "in openapi.yaml but not served"
