"""A loopback OTLP/HTTP trace receiver: keeps every span it is sent, decoded with opentelemetry-proto."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support import LoopbackServer, QuietHandler


class OtlpReceiver(LoopbackServer):
    def __init__(self) -> None:
        self.spans: list[Any] = []  # opentelemetry.proto.trace.v1.trace_pb2.Span
        self.resources: list[dict[str, str]] = []
        super().__init__()

    def received(self) -> list[Any]:
        with self.lock:
            return list(self.spans)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.body())
                with receiver.lock:
                    for resource_spans in request.resource_spans:
                        attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        receiver.resources.append(attributes)
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans.extend(scope_spans.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        return Handler
