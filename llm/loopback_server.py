"""A local server that speaks the OpenAI wire protocol with scripted answers.

It implements ``POST /v1/chat/completions``, ``POST /v1/files``, ``GET /v1/files/{id}[/content]``,
``POST /v1/batches`` and ``GET /v1/batches/{id}`` (HTTP/1.1 keep-alive, JSON bodies, multipart
uploads) on ``127.0.0.1``, so the real ``openai`` SDK path of ``llm enhance`` and ``llm batch`` can
be exercised without a model: by the tests, by ``benchmarks/llm_bench.py`` (client throughput), and
by ``llm loopback-server`` for a free dry run of a config on real annotations.

What it answers is decided by a *responder*: ``responder(body, seen) -> Reply``, where ``seen``
counts earlier requests with the same messages (so "429 first, then an answer" is easy to script).
The default responder, :func:`well_formed_reply`, returns an answer that passes validation, built
from the numbered originals and the category in the prompt.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """A scripted answer: ``content`` with HTTP 200, or an error ``status`` (+ ``headers``).

    ``delay_s`` sleeps before answering (for timeouts and throughput runs).
    """

    content: str | None = None
    status: int = 200
    delay_s: float = 0.0
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[dict, int], Reply]

_ORIGINAL_LINE = re.compile(r"^(\d+)\. (.+)$", re.M)
_CATEGORY = re.compile(r"category (.+?)\.$", re.M)


def prompt_fields(body: dict) -> tuple[str, list[str]]:
    """``(category, originals)`` parsed from the user text of an ``llm`` request."""
    text = ""
    for message in body.get("messages", []):
        if message.get("role") == "user":
            content = message["content"]
            parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
            text = "\n".join(p.get("text", "") for p in parts if p.get("type") == "text")
    category = _CATEGORY.search(text)
    return (category.group(1) if category else "object"), [
        m[1] for m in _ORIGINAL_LINE.findall(text)
    ]


def well_formed_answer(body: dict) -> dict:
    """An answer that passes :func:`llm.schema.validate_answer` for the request ``body``."""
    category, originals = prompt_fields(body)
    return {
        "enhanced_expressions": [
            {"index": i, "original_expression": text, "variation": f"{text} seen from above"}
            for i, text in enumerate(originals, start=1)
        ],
        "unique_description": f"the {category} stands beside a grey road with green trees",
        "unique_expressions": [
            f"the {category} next to the grey road",
            f"the {category} close to the green trees",
        ],
    }


def well_formed_reply(body: dict, seen: int) -> Reply:
    return Reply(content=json.dumps(well_formed_answer(body)))


def _messages_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()


# Token estimates: 4 characters per text token, a fixed count per image (Gemma 3 encodes every
# image as 256 soft tokens plus two delimiters).
CHARS_PER_TOKEN = 4
TOKENS_PER_IMAGE = 258


def estimate_prompt_tokens(body: dict) -> int:
    chars, images = 0, 0
    for message in body.get("messages", []):
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        for part in parts:
            if part.get("type") == "text":
                chars += len(part.get("text", ""))
            else:
                images += 1
    return chars // CHARS_PER_TOKEN + images * TOKENS_PER_IMAGE


def _chat_completion(body: dict, reply: Reply, ids: itertools.count) -> dict:
    content = reply.content or ""
    usage = {
        "prompt_tokens": estimate_prompt_tokens(body),
        "completion_tokens": max(1, len(content) // CHARS_PER_TOKEN),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": f"chatcmpl-{next(ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": f"{body.get('model', 'loopback')}-loopback",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content, "refusal": None},
                "finish_reason": reply.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage,
    }


def _error_body(status: int) -> dict:
    return {
        "error": {"message": f"loopback error {status}", "type": "loopback", "code": str(status)}
    }


class LoopbackServer:
    """Run with ``with LoopbackServer(responder) as server: ... server.base_url ...``.

    ``requests`` lists the chat-completion bodies received (batch lines included),
    ``max_in_flight`` the most chat requests handled at once, ``authorization`` the last
    ``Authorization`` header seen. A batch completes after ``batch_polls`` status polls.
    """

    def __init__(self, responder: Responder | None = None, batch_polls: int = 1):
        self.responder = responder or well_formed_reply
        self.batch_polls = batch_polls
        self.requests: list[dict] = []
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.max_in_flight = 0
        self.authorization: str | None = None
        self._in_flight = 0
        self._seen: Counter = Counter()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self, port: int = 0) -> LoopbackServer:
        handler = type("Handler", (_Handler,), {"loopback": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ chat

    def _reply_for(self, body: dict) -> Reply:
        with self._lock:
            self.requests.append(body)
            key = _messages_key(body)
            seen = self._seen[key]
            self._seen[key] += 1
        return self.responder(body, seen)

    def chat(self, body: dict) -> tuple[int, dict, dict[str, str]]:
        reply = self._reply_for(body)
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if reply.delay_s:
                time.sleep(reply.delay_s)
        finally:
            with self._lock:
                self._in_flight -= 1
        if reply.status != 200:
            return reply.status, _error_body(reply.status), reply.headers
        return 200, _chat_completion(body, reply, self._ids), reply.headers

    # ------------------------------------------------------------ files and batches

    def add_file(self, data: bytes, purpose: str, filename: str) -> dict:
        file_id = f"file-{next(self._ids)}"
        record = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = {"meta": record, "data": data}
        return record

    def create_batch(self, request: dict) -> dict:
        batch_id = f"batch_{next(self._ids)}"
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": request["endpoint"],
            "input_file_id": request["input_file_id"],
            "completion_window": request["completion_window"],
            "status": "validating",
            "created_at": int(time.time()),
            "metadata": request.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        self.batches[batch_id] = {"batch": batch, "polls": 0}
        return batch

    def poll_batch(self, batch_id: str) -> dict:
        state = self.batches[batch_id]
        state["polls"] += 1
        batch = state["batch"]
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress" and state["polls"] > self.batch_polls:
            self._run_batch(batch)
        return batch

    def _run_batch(self, batch: dict) -> None:
        lines = self.files[batch["input_file_id"]]["data"].decode("utf-8").splitlines()
        outputs, errors = [], []
        for number, line in enumerate(lines):
            request = json.loads(line)
            status, payload, _ = self.chat(request["body"])
            record = {
                "id": f"batch_req_{number}",
                "custom_id": request["custom_id"],
                "response": {"status_code": status, "request_id": f"req_{number}", "body": payload},
                "error": None,
            }
            (outputs if status == 200 else errors).append(json.dumps(record))
        batch["request_counts"] = {
            "total": len(lines),
            "completed": len(outputs),
            "failed": len(errors),
        }
        if outputs:
            batch["output_file_id"] = self.add_file(
                ("\n".join(outputs) + "\n").encode(), "batch_output", "output.jsonl"
            )["id"]
        if errors:
            batch["error_file_id"] = self.add_file(
                ("\n".join(errors) + "\n").encode(), "batch_output", "errors.jsonl"
            )["id"]
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    loopback: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            content_type = "application/octet-stream" if isinstance(payload, bytes) else None
            self.send_header("Content-Type", content_type or "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def do_POST(self) -> None:
        self.loopback.authorization = self.headers.get("Authorization")
        raw = self._read_body()
        path = self.path.split("?")[0]
        if path == "/v1/chat/completions":
            status, payload, headers = self.loopback.chat(json.loads(raw))
            self._send(status, payload, headers)
        elif path == "/v1/files":
            fields = _multipart(self.headers.get("Content-Type", ""), raw)
            record = self.loopback.add_file(
                fields["file"][1], fields["purpose"][1].decode(), fields["file"][0] or "upload"
            )
            self._send(200, record)
        elif path == "/v1/batches":
            self._send(200, self.loopback.create_batch(json.loads(raw)))
        else:
            self._send(404, _error_body(404))

    def do_GET(self) -> None:
        self.loopback.authorization = self.headers.get("Authorization")
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in self.loopback.batches:
            self._send(200, self.loopback.poll_batch(parts[2]))
        elif parts[:2] == ["v1", "files"] and len(parts) >= 3 and parts[2] in self.loopback.files:
            stored = self.loopback.files[parts[2]]
            self._send(200, stored["data"] if parts[-1] == "content" else stored["meta"])
        else:
            self._send(404, _error_body(404))


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, bytes)`` of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def serve_forever(port: int, latency_s: float = 0.0) -> None:
    """``llm loopback-server``: answer every request with a well-formed answer (after ``latency_s``)
    until interrupted."""

    def respond(body: dict, seen: int) -> Reply:
        return Reply(well_formed_reply(body, seen).content, delay_s=latency_s)

    server = LoopbackServer(respond).start(port)
    print(f"loopback OpenAI server on {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
