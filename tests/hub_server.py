"""A fake Hugging Face hub on 127.0.0.1 for tests: model info, file resolve (HEAD, GET, ranges), errors, drops."""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)   # commit sha -> {filename: bytes}
    refs: dict[str, str] = field(default_factory=dict)                    # branch / tag -> commit sha
    gated: bool = False


class FakeHub:
    """The endpoints huggingface_hub 2.x calls, as the real hub answers them (headers read from file_download.py).

    `drop_once` maps (repo, filename) to a byte count (None: half the file): the file's first full GET sends that
    many bytes and closes the connection;
    `hold` maps (repo, filename) to an Event the file's full GETs wait for (at most `hold_timeout` s), so a test can
    see what happens while a shard is still downloading; `rate` (bytes/s) throttles file bodies. `log` records
    (method, repo, filename or 'api', Range).
    """

    def __init__(self):
        self.repos: dict[str, FakeRepo] = {}
        self.log: list[tuple[str, str, str, str | None]] = []
        self.drop_once: dict[tuple[str, str], int | None] = {}
        self.hold: dict[tuple[str, str], threading.Event] = {}
        self.hold_timeout = 20.0
        self.rate: float | None = None
        self._server: ThreadingHTTPServer | None = None

    # ---- content
    def add(self, repo: str, folder: Path | None = None, files: dict[str, bytes] | None = None,
            ref: str = "main", gated: bool = False) -> str:
        """Publish a folder's top-level files (plus `files`) as a new commit of `repo` under `ref`; its sha."""
        content = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()} if folder else {}
        content.update(files or {})
        digest = hashlib.sha1(repo.encode() + ref.encode())
        for name, data in sorted(content.items()):
            digest.update(name.encode() + hashlib.sha256(data).digest())
        sha = digest.hexdigest()
        entry = self.repos.setdefault(repo, FakeRepo())
        entry.commits[sha] = content
        entry.refs[ref] = sha
        entry.gated = entry.gated or gated
        return sha

    def gets(self, repo: str) -> list[tuple[str, str | None]]:
        """(filename, Range header) of every file GET of a repo, in order."""
        return [(f, r) for m, rp, f, r in self.log if m == "GET" and rp == repo and f != "api"]

    # ---- server
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        for event in self.hold.values():
            event.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:   # a client gone mid-request is no test failure
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, *args) -> None:       # quiet
        pass

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _repo_commit(self, repo_id: str, revision: str) -> tuple[FakeRepo, str] | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if repo.gated:
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it "
                                          "and be authenticated to access it. Please log in.")
            return None
        commit = repo.refs.get(revision, revision if revision in repo.commits else None)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, commit

    def do_HEAD(self) -> None:
        self._resolve(body=False)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/api/models/"):
            self._model_info(path.removeprefix("/api/models/"))
        else:
            self._resolve(body=True)

    def _model_info(self, rest: str) -> None:
        repo_id, _, revision = rest.partition("/revision/")
        repo_id, revision = unquote(repo_id), unquote(revision) or "main"
        self.fake.log.append(("GET", repo_id, "api", None))
        found = self._repo_commit(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        files = sorted(repo.commits[commit].items())
        body = json.dumps({"id": repo_id, "sha": commit, "private": False, "gated": False,
                           "siblings": [{"rfilename": n, "size": len(d)} for n, d in files]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _resolve(self, body: bool) -> None:
        path = urlsplit(self.path).path
        if "/resolve/" not in path:
            self._error(404, "EntryNotFound", "not a resolve url")
            return
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        repo_id, revision, filename = unquote(repo_id), unquote(revision), unquote(filename)
        wanted = self.headers.get("Range")
        self.fake.log.append((self.command, repo_id, filename, wanted))
        found = self._repo_commit(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        data = repo.commits[commit].get(filename)
        if data is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist", commit)
            return
        key = (repo_id, filename)
        if body and key in self.fake.hold and not wanted:
            self.fake.hold[key].wait(self.fake.hold_timeout)
        start, end = 0, len(data) - 1
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last) if last else end, end)
        chunk = data[start:end + 1]
        self.send_response(206 if wanted else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if not body:
            return
        if key in self.fake.drop_once and not wanted:
            sent = self.fake.drop_once.pop(key)
            self.wfile.write(chunk[: len(chunk) // 2 if sent is None else sent])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)     # the peer sees the body end early
            return
        if self.fake.rate and len(chunk) > 100_001:         # throttled (not the header reads)
            piece = 256 * 1024
            for at in range(0, len(chunk), piece):
                self.wfile.write(chunk[at:at + piece])
                time.sleep(len(chunk[at:at + piece]) / self.fake.rate)
            return
        self.wfile.write(chunk)
