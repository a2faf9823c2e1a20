"""Turn a request's JSON body (or query string) into a msgspec struct, or a problem naming every bad field."""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import Request

from service.errors import FieldError, InvalidInput, MalformedJson, UnsupportedMediaType

T = TypeVar("T", bound=msgspec.Struct)

JSON_MEDIA_TYPES = ("application/json", "application/merge-patch+json")
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


async def read_json(request: Request, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode the body straight from bytes; on failure list every offending field, not just the first."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES:
        raise UnsupportedMediaType(f"Send the body as application/json (got {media_type or 'no content type'}).")
    body = await request.body()
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        first_error = exc  # the wrong shape: collect every field error below
    except msgspec.DecodeError as exc:
        raise _malformed(exc) from None
    except UnicodeDecodeError:
        raise MalformedJson("The body is not valid UTF-8.") from None
    try:
        # Validation stops at the first error, so the rest of the body may still be malformed.
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _malformed(exc) from None
    except UnicodeDecodeError:
        raise MalformedJson("The body is not valid UTF-8.") from None
    except RecursionError:  # nested too deeply to inspect field by field: report the first error
        raise InvalidInput([FieldError(_subpath(first_error).lstrip(".") or "$", _message(first_error))]) from None
    raise InvalidInput(field_errors(value, decoder.type))


def _malformed(exc: msgspec.DecodeError) -> MalformedJson:
    return MalformedJson(f"The body is not valid JSON: {_message(exc)}.")


def convert_query(params: QueryParams, struct: type[T]) -> T:
    """Query parameters into a struct; strings are coerced (?limit=5), unknown or repeated names are refused."""
    known = struct.__struct_encode_fields__
    values: dict[str, str] = {}
    errors = []
    for name, value in params.multi_items():
        if name not in known:
            errors.append(FieldError(name, "unknown query parameter"))
        elif name in values:
            errors.append(FieldError(name, "given more than once"))
        values[name] = value
    if errors:
        raise InvalidInput(errors)
    try:
        return msgspec.convert(values, struct, strict=False)
    except msgspec.ValidationError:
        raise InvalidInput(field_errors(values, struct, strict=False)) from None


class QueryParser(Generic[T]):
    """`convert_query` for one struct, remembered per distinct query string (at most `size` of them):
    a cached answer should cost next to nothing. Invalid queries raise and are not kept."""

    def __init__(self, struct: type[T], *, size: int = 256) -> None:
        self.struct = struct
        self.size = size
        self._parsed: dict[bytes, T] = {}

    def __call__(self, request: Request) -> T:
        raw: bytes = request.scope["query_string"]
        query = self._parsed.get(raw)
        if query is None:
            query = convert_query(request.query_params, self.struct)
            if len(self._parsed) >= self.size:
                self._parsed.clear()
            self._parsed[raw] = query
        return query


def field_errors(value: Any, struct: type[msgspec.Struct], *, strict: bool = True) -> list[FieldError]:
    """Check each field on its own so the caller hears about all of them at once."""
    if not isinstance(value, dict):
        return [FieldError("$", f"expected a JSON object, got {_json_type(value)}")]
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    errors = [FieldError(name, "unknown field") for name in value if name not in fields]
    for name, info in fields.items():
        if name not in value:
            if info.required:
                errors.append(FieldError(name, "required"))
            continue
        try:
            msgspec.convert(value[name], info.type, strict=strict)
        except msgspec.ValidationError as exc:
            errors.append(FieldError(name + _subpath(exc), _message(exc)))
    if not errors:  # every field passes alone: the struct's own cross-field check refused it
        try:
            msgspec.convert(value, struct, strict=strict)
        except msgspec.ValidationError as exc:
            errors.append(FieldError("$", _message(exc)))
    return errors


def _subpath(exc: msgspec.ValidationError) -> str:
    match = _PATH.search(str(exc))
    return match["path"] if match else ""


def _message(exc: Exception) -> str:
    text = _PATH.sub("", str(exc)).replace("`", "")
    # msgspec starts with "Expected …" or "JSON is malformed": lower-case a capital only where the next letter
    # is not one too, so an acronym keeps its case.
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(type(value), "null")
