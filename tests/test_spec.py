"""openapi.yaml is a valid OpenAPI 3.1 document, by the reference validator a client's tooling would use."""

from __future__ import annotations

import copy

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from service.docs import load_spec, spec_path


def test_openapi_yaml_is_a_valid_openapi_3_1_document() -> None:
    _, spec = load_spec()
    assert spec["openapi"].startswith("3.1.")
    validate(copy.deepcopy(spec), base_uri=spec_path().as_uri(), cls=OpenAPIV31SpecValidator)


def test_validator_refuses_a_keyword_beside_a_ref() -> None:
    """The mistake it first found: in 3.1 a $ref may carry only summary and description beside it."""
    _, spec = load_spec()
    planted = copy.deepcopy(spec)
    headers = planted["components"]["responses"]["Unauthorized"]["headers"]
    headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate", "required": True}
    with pytest.raises(OpenAPIValidationError, match="'required' was unexpected"):
        validate(planted, base_uri=spec_path().as_uri(), cls=OpenAPIV31SpecValidator)
