from __future__ import annotations

import re

import httpx
import pytest
import yaml

from service.docs import spec_path

pytestmark = pytest.mark.anyio


async def test_openapi_yaml_is_served_byte_for_byte(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/yaml")
    assert response.content == spec_path().read_bytes()


async def test_openapi_json_is_the_same_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.json() == yaml.safe_load(spec_path().read_bytes())


async def test_docs_page_and_every_asset_it_references_are_served_locally(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "the page must not load anything remote"
    references = re.findall(r"""(?:src|href)="([^"]+)""", page.text)
    assert {"/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/docs/init.js"} <= set(references)
    for reference in references:
        asset = await client.get(reference)
        assert asset.status_code == 200, reference
        assert len(asset.content) > 0
    init = (await client.get("/docs/init.js")).text
    assert '"/openapi.json"' in init and "validatorUrl: null" in init
    bundle = await client.get("/docs/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.content


async def test_asset_revalidation_and_unknown_asset(client: httpx.AsyncClient) -> None:
    first = await client.get("/docs/swagger-ui.css")
    again = await client.get("/docs/swagger-ui.css", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    missing = await client.get("/docs/..%2F..%2Fsettings.py")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
