"""Hand-built facial profiles (fast, and independent of the curated catalogue) and a scripted OpenAI-compatible
server on 127.0.0.1."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kgface.kg.profiles import FacialProfile, NegativePhenotype, Phenotype, healthy_profile


@pytest.fixture
def acne():
    return FacialProfile(
        disease_id="MONDO:0011438", name="acne vulgaris", kg="hpo",
        phenotypes=[
            Phenotype("HP:0001061", "Acne", "skin", "red acne papules on the cheeks and forehead", 1.0),
            Phenotype("HP:0025249", "Comedo", "skin", "blackheads and whiteheads", 1.0),
            Phenotype("HP:0200034", "Papule", "skin", "inflamed raised bumps", 0.9, min_stage=1),
            Phenotype("HP:0200039", "Pustule", "skin", "yellow pus-filled pustules", 0.5, min_stage=2),
        ],
        text={"definition": "A common skin disease of the pilosebaceous unit."}, query="acne")


@pytest.fixture
def down():
    return FacialProfile(
        disease_id="ORPHA:870", name="Down syndrome", kg="hpo",
        phenotypes=[
            Phenotype("HP:0000582", "Upslanted palpebral fissure", "eyes", "upward-slanting eyes", 0.84),
            Phenotype("HP:0005280", "Depressed nasal bridge", "nose", "a flat nasal bridge", None),
            Phenotype("HP:0000286", "Epicanthus", "eyes", "skin folds at the inner eye corners", 0.3),
            Phenotype("HP:0000463", "Anteverted nares", "nose", "upturned nostrils", 0.1),
        ],
        negative_phenotypes=[NegativePhenotype("HP:0000316", "Hypertelorism", "eyes")],
        text={"definition": "A chromosomal condition caused by trisomy 21."}, query="ORPHA:870")


@pytest.fixture
def healthy():
    return healthy_profile("hpo")


def good(ids=("HP:0000582", "HP:0005280")):
    """A valid answer for `down` by default (its two frequent phenotypes, cited from stage 1 on)."""
    return json.dumps({"stages": [
        {"stage": s, "description": f"A face at stage {s} with upward-slanting eyes and a flat nasal bridge.",
         "phenotypes": list(ids) if s else [], "negative_prompt": "blurry"} for s in range(4)]})


class FakeServer:
    """Replies from a script: each item is a content string (a 200 chat answer), {"content", "finish_reason"},
    (status, headers) or (status, headers, body), "hang", "close" (drop the connection without an answer) or
    "truncate" (a 200 whose body stops short of its Content-Length). GET requests (a followed redirect) are
    recorded and answered 404."""

    def __init__(self):
        self.script, self.requests, self.release = [], [], threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append({"time": time.monotonic(), "path": self.path, "method": "GET",
                                        "headers": dict(self.headers)})
                self.send_error(404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"time": time.monotonic(), "path": self.path, "body": body,
                                        "headers": dict(self.headers), "method": "POST"})
                item = server.script.pop(0) if server.script else good()
                if item == "hang":
                    server.release.wait(5)
                    return
                if item == "close":  # the handler returns without a status line; the server closes the socket
                    self.close_connection = True
                    return
                if isinstance(item, tuple):
                    status, headers, text = (*item, "")[:3]
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(text.encode())))
                    self.end_headers()
                    self.wfile.write(text.encode())
                    return
                choice = {"message": {"role": "assistant", "content": item}, "finish_reason": "stop"}
                if isinstance(item, dict):
                    choice = {"message": {"role": "assistant", "content": item["content"]},
                              "finish_reason": item.get("finish_reason", "stop")}
                data = json.dumps({"choices": [choice]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data) + (100 if item == "truncate" else 0)))
                self.end_headers()
                self.wfile.write(data)
                if item == "truncate":
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture(name="good")
def _good():
    """good(ids) -> a valid answer for the `down` profile."""
    return good


@pytest.fixture
def other_server():
    """A second server: where a redirect points."""
    s = FakeServer()
    yield s
    s.close()
