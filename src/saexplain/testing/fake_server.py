"""A fault-injecting OpenAI-compatible HTTP server on 127.0.0.1, started by the tests themselves: in a thread
(`FaultServer`) or as a real separate process (`FaultServerProcess`,
`python -m saexplain.testing.fake_server`).

Each request to /v1/chat/completions or /v1/completions takes the next action from a script:
  ("ok", text) · ("timeout", seconds) · ("429", retry_after) · ("500",) · ("malformed",) · ("empty",)
and falls back to ("ok", default_text) when the script runs out. With a `handler` (a function of the
saexplain Request, as ScriptedBackend's), the reply text comes from it; a handler returning None answers HTTP 500.
This is a fake LLM server: it returns canned text and exists to test parsing, fault handling and the run's
bookkeeping only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    def __init__(self, script=(), default_text="ok", delay: float = 0.0, handler=None, port: int = 0):
        self.script = list(script)
        self.handler = handler
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

            def do_GET(self):
                if self.path == "/stats":
                    return self.send_json(200, {"requests": len(server.requests)})
                return self.send_json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    return self.send_json(404, {"error": {"message": f"no route {self.path}"}})
                with server.lock:
                    server.requests.append(body)
                    action = server.script.pop(0) if server.script else None
                if action is None:
                    action = ("ok", server.default_text) if server.handler is None else _handled(server.handler, body)
                with server.lock:
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
                return self.send_json(200, reply(body, action[1], action[2] if len(action) > 2 else None))

            def send_json(self, status, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
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


def _handled(handler, body: dict) -> tuple:
    """The action for a request from a handler of saexplain Requests: ("ok", text[, first-token logprobs]) or
    ("500",) when it returns None."""
    from saexplain.llm.base import Request

    messages = tuple((m["role"], m["content"]) for m in body["messages"]) if "messages" in body else None
    logprobs = body.get("top_logprobs") if messages is not None else body.get("logprobs")
    request = Request(messages=messages, prompt=body.get("prompt"), max_tokens=body.get("max_tokens", 256),
                      temperature=body.get("temperature", 0.0), stop=tuple(body.get("stop") or ()),
                      n=body.get("n", 1), logprobs=logprobs or None, seed=body.get("seed"))
    out = handler(request)
    if out is None:
        return ("500",)
    if isinstance(out, dict):  # {"action": ("429", retry_after)} and the like
        return tuple(out["action"])
    return ("ok", out) if isinstance(out, str) else ("ok", out[0], out[1])


def reply(body: dict, text: str, first: dict[str, float] | None = None) -> dict:
    chat = "messages" in body
    choice = {"index": 0, "finish_reason": "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
        if body.get("logprobs"):
            top = first or {text: -0.1, "other": -2.4}
            best = max(top, key=top.get)
            choice["logprobs"] = {"content": [{"token": best, "logprob": top[best], "bytes": None,
                                               "top_logprobs": [{"token": t, "logprob": lp, "bytes": None}
                                                                for t, lp in top.items()]}]}
    else:
        choice["text"] = text
    return {"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 0,
            "model": body.get("model", "m"), "choices": [choice] * body.get("n", 1),
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}


class FaultServerProcess:
    """The fake server as a separate process (`python -m saexplain.testing.fake_server --handler
    module:function`), so that tests and benchmarks see a real server over real sockets, as a user's run would.
    A handler without a module is one of `saexplain.testing.scripted`'s (e.g. "universal")."""

    def __init__(self, handler: str, default_text: str = "ok", port: int = 0, delay: float = 0.0):
        if ":" not in handler:
            handler = f"saexplain.testing.scripted:{handler}"
        self.args = [sys.executable, "-m", "saexplain.testing.fake_server", "--handler", handler,
                     "--default-text", default_text, "--port", str(port), "--delay", str(delay)]
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.url = line
        return self

    @property
    def requests(self) -> int:
        """Requests the process has answered so far."""
        import urllib.request

        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/stats", timeout=5) as r:
            return json.loads(r.read())["requests"]

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> None:
    import argparse
    import importlib

    ap = argparse.ArgumentParser(description="a fake OpenAI-compatible LLM server for tests (canned replies)")
    ap.add_argument("--handler", default=None, help="module:function of a saexplain Request → text (None: 500)")
    ap.add_argument("--default-text", default="ok")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds every reply takes (slots are unlimited)")
    args = ap.parse_args()
    handler = None
    if args.handler:
        mod, _, fn = args.handler.partition(":")
        handler = getattr(importlib.import_module(mod), fn)
    server = FaultServer(default_text=args.default_text, handler=handler, port=args.port, delay=args.delay)
    print(server.url, flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
