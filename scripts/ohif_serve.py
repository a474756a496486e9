"""Serve OHIF Viewer's built app (scripts/ohif.sh) against a triage-node's DICOMweb, same origin.

    python scripts/ohif_serve.py --dist .cache/ohif/3.13.2/dist --node http://127.0.0.1:8080 \
        [--token-env TRIAGE_NODE_TOKEN] [--host 127.0.0.1] [--port 3000]

Why a proxy: the browser then talks to one origin, so no CORS is needed, and the node's bearer
token is added here and never reaches the browser. (To serve OHIF from another origin instead,
set ``[http] cors_origins`` on the node and give OHIF the node's URL in its app config; the token
must then come from the viewer's own login.)

- ``/app-config.js``: OHIF's configuration, written here: one DICOMweb data source whose qido, wado
  and wado-uri roots are ``<this server>/dicomweb``; thumbnails from ``/thumbnail``;
- ``/dicomweb/...``: passed to the node (method, path, query, body, Accept), with
  ``Authorization: Bearer <token>`` when a token is given;
- everything else: a file of dist/, or index.html (OHIF is a single-page app: /viewer?... too).
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  customizationService: {
    // OHIF starts a cine player on every OT series (its default ['OT', 'US']); the summary card is
    // one OT image, not a clip.
    autoCineModalities: { $set: ['US'] },
    // OHIF 3.13 hydrates only measurement groups with a SCOORD; a group without geometry (the SR's
    // study-level TID 1501 groups) makes it throw ("reading 'ReferencedSOPSequence'") and the SR
    // opens empty. Give such groups an empty placeholder so that OHIF skips them and shows the rest.
    onBeforeSRAddMeasurement: {
      $set: ({ measurement }) => {
        if (!measurement.coords || measurement.coords.length === 0) {
          measurement.coords = [{}];
        }
        return measurement;
      },
    },
  },
  defaultDataSourceName: 'triage-node',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'triage-node',
    configuration: {
      friendlyName: 'triage-node DICOMweb',
      name: 'triage-node',
      wadoUriRoot: '/dicomweb',
      qidoRoot: '/dicomweb',
      wadoRoot: '/dicomweb',
      qidoSupportsIncludeField: false,
      supportsReject: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      staticWado: false,
      singlepart: 'bulkdata,video,pdf',
      bulkDataURI: { enabled: true },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
    "server",
    "date",
}


def make_handler(dist: Path, node_url: str, token: str | None) -> type[BaseHTTPRequestHandler]:
    dist = dist.resolve()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

        def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _proxy(self) -> None:
            length = int(self.headers.get("Content-Length", "0") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host", "authorization"}}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            req = urllib.request.Request(node_url + self.path, data=body, headers=headers, method=self.command)
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    status, data, resp_headers = resp.status, resp.read(), resp.headers
            except urllib.error.HTTPError as exc:
                status, data, resp_headers = exc.code, exc.read(), exc.headers
            except (urllib.error.URLError, OSError) as exc:
                self._send(502, f"node unreachable: {exc}".encode(), "text/plain")
                return
            extra = {k: v for k, v in resp_headers.items() if k.lower() not in HOP_BY_HOP | {"content-type"}}
            self._send(status, data, resp_headers.get("Content-Type", "application/octet-stream"), extra)

        def _static(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/app-config.js":
                self._send(200, APP_CONFIG.encode(), "text/javascript", {"Cache-Control": "no-store"})
                return
            target = (dist / path.lstrip("/")).resolve()
            if not target.is_relative_to(dist) or not target.is_file():
                target = dist / "index.html"  # single-page app routes
            ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            self._send(200, target.read_bytes(), ctype)

        def do_GET(self) -> None:
            if self.path.startswith("/dicomweb/") or self.path == "/dicomweb":
                self._proxy()
            else:
                self._static()

        do_HEAD = do_GET

        def do_POST(self) -> None:
            self._proxy()

        def do_PUT(self) -> None:
            self._proxy()

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dist", required=True, type=Path, help="OHIF's dist/ folder (scripts/ohif.sh prints it)")
    ap.add_argument("--node", required=True, help="the node's HTTP base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--token-env", default="TRIAGE_NODE_TOKEN", help="environment variable holding [http] token")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3000)
    args = ap.parse_args(argv)
    if not (args.dist / "index.html").is_file():
        print(f"ohif_serve: {args.dist} has no index.html (run scripts/ohif.sh)", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer(
        (args.host, args.port), make_handler(args.dist, args.node.rstrip("/"), os.environ.get(args.token_env))
    )
    print(f"OHIF on http://{args.host}:{server.server_address[1]}/ -> {args.node}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
