"""The hand-written openapi.yaml against the real app, in-process, with every schemathesis check."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from starlette.routing import Route

from service.app import create_app
from service.docs import load_spec, spec_path
from service.settings import Settings
from tests.github_standin import GitHubStandIn

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

CONFIG = {
    "generation": {"deterministic": True, "max-examples": 40},
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": True},
    },
    "checks": {
        # 401/403 would otherwise count as accepting valid data, letting a broken auth set-up pass.
        "positive_data_acceptance": {"expected-statuses": ["2xx", "304", "404"]},
    },
}


@pytest.fixture
def api_schema(make_settings: Callable[..., Settings], standin: GitHubStandIn):  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_path(str(spec_path()), config=schemathesis.Config.from_dict(CONFIG))
    schema.app = create_app(make_settings(GITHUB_OWNER=standin.owner, GITHUB_API_URL=standin.url))
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_api_conforms_to_contract(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate()


def test_routes_and_spec_operations_match_both_ways(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or ())
        if method != "HEAD"  # Starlette adds HEAD to every GET route
    }
    _, spec = load_spec()
    documented = {(path, method) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS}
    assert served - documented == set(), "served but not in openapi.yaml"
    assert documented - served == set(), "in openapi.yaml but not served"
