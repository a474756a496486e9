"""A minimal FHIR server for tests: accepts a transaction Bundle POSTed to its base URL with the
expected bearer token, validates it with the fhir.resources models (Bundle, and each entry as its
own resource type), appends the JSON to a JSON-lines file and answers a transaction-response.
A bad token is 401; a Bundle that does not validate is 400 with an OperationOutcome.

    python fhir_endpoint.py PORT TOKEN OUT.jsonl
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fhir.resources import get_fhir_model_class
from fhir.resources.bundle import Bundle


def outcome(text: str) -> bytes:
    return json.dumps(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}]}
    ).encode()


class Handler(BaseHTTPRequestHandler):
    token = ""
    out = ""

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Authorization", "") != f"Bearer {self.token}":
            self._answer(401, outcome("bearer token missing or wrong"))
            return
        try:
            bundle = Bundle.model_validate_json(body)
            for entry in bundle.entry or []:
                data = json.loads(entry.resource.model_dump_json())
                get_fhir_model_class(data["resourceType"]).model_validate(data)
        except Exception as exc:
            self._answer(400, outcome(f"{type(exc).__name__}: {exc}"[:1000]))
            return
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(body.decode("utf-8") + "\n")
        response = {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": "201 Created"}} for _ in bundle.entry or []],
        }
        self._answer(200, json.dumps(response).encode())


if __name__ == "__main__":
    Handler.token, Handler.out = sys.argv[2], sys.argv[3]
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("listening", flush=True)
    server.serve_forever()
