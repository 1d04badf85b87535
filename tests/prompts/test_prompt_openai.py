"""The openai backend against a real HTTP server on 127.0.0.1: answers, bad answers, HTTP errors, a hanging
server, rate limiting, the API key, and the answer cache."""
import logging
import time

import pytest

from kgface.cache import Cache
from kgface.prompts import LLMError, OpenAIBackend, describe_profiles
from kgface.prompts.backends import _retry_after

SECRET = "sk-test-0123456789-do-not-log"


@pytest.fixture
def llm(server):
    return {"name": "openai", "base_url": server.base_url, "model": "fake-7b", "api_key_env": "KGFACE_TEST_KEY",
            "timeout_s": 0.3, "max_retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.5, "min_interval_s": 0.0,
            "temperature": 0.0, "max_tokens": 256, "json_mode": True, "max_attempts": 3}


def test_valid_answer_is_used_and_cached(server, llm, down, tmp_path):
    cache = Cache(tmp_path / "cache")
    d = describe_profiles([down], llm, cache)[down.disease_id]
    assert d.source == "llm" and d.attempts == 1 and d.fallback_reason is None
    assert d.stages[2].description == "A face at stage 2 with upward-slanting eyes."
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "fake-7b"
    assert req["body"]["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in req["body"]["messages"]] == ["system", "user"]
    # a second run reads the cache: no request
    again = describe_profiles([down], llm, Cache(tmp_path / "cache"))[down.disease_id]
    assert again == d and len(server.requests) == 1


def test_cache_invalidation(server, llm, down, tmp_path):
    cache = Cache(tmp_path / "cache")
    describe_profiles([down], llm, cache)
    describe_profiles([down], {**llm, "model": "fake-13b"}, cache)  # another model
    describe_profiles([down], {**llm, "temperature": 0.7}, cache)  # another generation parameter
    describe_profiles([down], {**llm, "timeout_s": 5.0}, cache)  # transport settings do not change answers: hit
    down.phenotypes[0].visual = "eyes slanting upwards"  # the request changes
    describe_profiles([down], llm, cache)
    assert len(server.requests) == 4
    assert len(list((tmp_path / "cache" / "llm").iterdir())) == 4


def test_malformed_json_is_retried_with_the_error(server, good, llm, down, tmp_path):
    server.script = ['{"stages": [ oops', good()]
    d = describe_profiles([down], llm, Cache(tmp_path))[down.disease_id]
    assert d.source == "llm" and d.attempts == 2 and len(d.errors) == 1 and "Invalid JSON" in d.errors[0]
    retry = server.requests[1]["body"]["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == '{"stages": [ oops' and "rejected" in retry[3]["content"]


def test_wrong_ids_fall_back_to_template_and_are_not_cached(server, good, llm, down, tmp_path):
    server.script = [good(ids=["HP:9999999"])] * 3 + [good()]
    cache = Cache(tmp_path)
    d = describe_profiles([down], llm, cache)[down.disease_id]
    assert d.source == "template" and d.backend == "openai" and d.attempts == 3 and len(d.errors) == 3
    assert "HP:9999999 is not one of the profile's phenotypes" in d.fallback_reason
    assert d.stages[1].description.startswith("A face with Down syndrome, mild stage")
    assert "HP:9999999" in server.requests[1]["body"]["messages"][-1]["content"]  # the error went back
    assert describe_profiles([down], llm, cache)[down.disease_id].source == "llm"  # asked again next run


def test_429_honours_retry_after(server, good, llm, down, tmp_path):
    server.script = [(429, {"Retry-After": "0.3"}), good()]  # fractional seconds keep the test short
    start = time.monotonic()
    d = describe_profiles([down], llm, Cache(tmp_path))[down.disease_id]
    assert d.source == "llm" and len(server.requests) == 2
    assert server.requests[1]["time"] - server.requests[0]["time"] >= 0.29
    assert time.monotonic() - start < 3


def test_500_retried_then_given_up(server, good, llm, down, tmp_path):
    server.script = [(500, {}), (503, {}), good()]
    assert describe_profiles([down], llm, Cache(tmp_path))[down.disease_id].source == "llm"
    server.script = [(500, {})] * 3
    d = describe_profiles([down], llm, None)[down.disease_id]
    assert d.source == "template" and d.fallback_reason.startswith("backend error: HTTP 500")
    assert "gave up after 3 tries" in d.fallback_reason and len(server.requests) == 6


def test_client_error_is_not_retried(server, llm):
    server.script = [(404, {})]
    with pytest.raises(LLMError, match="HTTP 404"):
        OpenAIBackend(**{k: v for k, v in llm.items() if k not in ("name", "max_attempts")}).complete([])
    assert len(server.requests) == 1


def test_hanging_server_hits_the_timeout(server, llm, down, tmp_path):
    server.script = ["hang"] * 3
    start = time.monotonic()
    d = describe_profiles([down], llm, Cache(tmp_path))[down.disease_id]
    assert d.source == "template" and "within 0.3 s" in d.fallback_reason
    assert len(server.requests) == 3 and time.monotonic() - start < 3


def test_unreachable_server(llm, down):
    d = describe_profiles([down], {**llm, "base_url": "http://127.0.0.1:9/v1", "max_retries": 0}, None)
    assert d[down.disease_id].source == "template" and "cannot reach" in d[down.disease_id].fallback_reason


def test_rate_limit_spaces_requests(server, llm):
    backend = OpenAIBackend(**{**{k: v for k, v in llm.items() if k not in ("name", "max_attempts")},
                               "min_interval_s": 0.15})
    for _ in range(3):
        backend.complete([{"role": "user", "content": "hi"}])
    times = [r["time"] for r in server.requests]
    assert all(b - a >= 0.14 for a, b in zip(times, times[1:]))


def test_api_key_sent_but_never_logged_or_stored(server, good, llm, down, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KGFACE_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    server.script = ["not json", (500, {}), good()]
    cache = Cache(tmp_path / "cache")
    d = describe_profiles([down], llm, cache)[down.disease_id]
    assert d.source == "llm"
    assert all(r["headers"]["Authorization"] == f"Bearer {SECRET}" for r in server.requests)
    stored = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert SECRET not in stored and SECRET not in d.model_dump_json() and SECRET not in caplog.text
    assert "500" in caplog.text  # the retry was logged, without the key
    monkeypatch.delenv("KGFACE_TEST_KEY")
    describe_profiles([down], {**llm, "model": "other"}, None)
    assert "Authorization" not in server.requests[-1]["headers"]


def test_retry_after_forms():
    assert _retry_after("2") == 2.0 and _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
