"""A fault-injecting OpenAI-compatible HTTP server on 127.0.0.1, started by the tests themselves.

Each request to /v1/chat/completions or /v1/completions takes the next action from a script:
  ("ok", text) · ("timeout", seconds) · ("429", retry_after) · ("500",) · ("malformed",) · ("empty",)
and falls back to ("ok", default_text) when the script runs out. This is a scripted stand-in for an LLM
server: it returns canned text and exists to test the client's parsing and fault handling only."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    def __init__(self, script=(), default_text="ok", delay: float = 0.0):
        self.script = list(script)
        self.default_text = default_text
        self.delay = delay
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: clients reuse connections

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    return self.send_json(404, {"error": {"message": f"no route {self.path}"}})
                with server.lock:
                    server.requests.append(body)
                    action = server.script.pop(0) if server.script else ("ok", server.default_text)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    self.respond(action, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def respond(self, action, body):
                kind = action[0]
                if kind == "timeout":
                    time.sleep(action[1])
                    return self.send_json(200, reply(body, "too late"))
                if kind == "429":
                    return self.send_json(429, {"error": {"message": "slow down"}}, {"Retry-After": str(action[1])})
                if kind == "500":
                    return self.send_json(500, {"error": {"message": "boom"}})
                if kind == "malformed":
                    data = b'{"choices": [ this is not json'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return None
                if kind == "empty":
                    return self.send_json(200, {**reply(body, ""), "choices": []})
                return self.send_json(200, reply(body, action[1]))

            def send_json(self, status, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(body: dict, text: str) -> dict:
    chat = "messages" in body
    choice = {"index": 0, "finish_reason": "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": text, "logprob": -0.1, "bytes": None,
                                               "top_logprobs": [{"token": text, "logprob": -0.1, "bytes": None},
                                                                {"token": "other", "logprob": -2.4, "bytes": None}]}]}
    else:
        choice["text"] = text
    return {"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 0,
            "model": body.get("model", "m"), "choices": [choice] * body.get("n", 1),
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}
