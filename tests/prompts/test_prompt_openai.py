"""The openai backend against a real HTTP server on 127.0.0.1: answers, bad answers, HTTP errors, a hanging
server, rate limiting, the API key, and the answer cache."""
import dataclasses
import json
import logging
import re
import time

import pytest

from kgface.cache import Cache
from kgface.config import compose
from kgface.errors import UserError
from kgface.prompts import LLMError, OpenAIBackend, build_messages, describe_profiles, make_backend
from kgface.prompts.backends import _retry_after

SECRET = "sk-test-0123456789-do-not-log"


@pytest.fixture
def llm(server):
    return {"name": "openai", "base_url": server.base_url, "model": "fake-7b", "api_key_env": "KGFACE_TEST_KEY",
            "timeout_s": 0.3, "max_retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.5, "min_interval_s": 0.0,
            "temperature": 0.0, "max_tokens": 256, "json_mode": True, "max_attempts": 3, "seed": 7}


@pytest.fixture
def waits(monkeypatch):
    """The backend's own sleeps, recorded (and slept): what it chose to wait, without a wall-clock bound that a
    loaded machine could break."""
    import types

    import kgface.prompts.backends as backends

    slept = []

    def sleep(seconds):
        slept.append(round(float(seconds), 3))
        time.sleep(seconds)

    monkeypatch.setattr(backends, "time", types.SimpleNamespace(sleep=sleep, monotonic=time.monotonic,
                                                                 time=time.time))
    return slept


def test_valid_answer_is_used_and_cached(server, llm, down, tmp_path):
    cache = Cache(tmp_path / "cache")
    d = describe_profiles([down], llm, cache)[down.disease_id]
    assert d.source == "llm" and d.attempts == 1 and d.fallback_reason is None
    assert d.stages[2].description == "A face at stage 2 with upward-slanting eyes and a flat nasal bridge."
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "fake-7b"
    assert req["body"]["response_format"] == {"type": "json_object"}
    # the generation settings the cache key names are the ones sent (not the server's defaults)
    assert req["body"]["temperature"] == 0.0 and req["body"]["max_tokens"] == 256 and req["body"]["seed"] == 7
    assert req["body"]["messages"] == build_messages(down)
    # a second run reads the cache: no request
    again = describe_profiles([down], llm, Cache(tmp_path / "cache"))[down.disease_id]
    assert again == d and len(server.requests) == 1
    # llm.json_mode=false (servers without response_format, as the 400 error advises): the field is not sent
    describe_profiles([down], {**llm, "json_mode": False, "seed": None}, Cache(tmp_path / "cache"))
    assert len(server.requests) == 2 and "response_format" not in server.requests[1]["body"]
    assert "seed" not in server.requests[1]["body"]  # llm.seed=null: not sent


def test_an_answer_the_cache_cannot_keep_is_still_used(server, llm, down, tmp_path, caplog):
    # a cache folder that cannot be written (here a file stands where the llm entries go; read-only or full alike)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "llm").write_text("not a folder", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="kgface.prompts.descriptions"):
        d = describe_profiles([down], llm, Cache(tmp_path / "cache"))[down.disease_id]
    assert d.source == "llm" and len(server.requests) == 1 and "cannot cache the LLM answer" in caplog.text


def test_cache_invalidation(server, llm, down, tmp_path):
    cache = Cache(tmp_path / "cache")
    asked = []  # the server's request count after each call: a new request is a cache miss
    for settings in (llm, {**llm, "model": "fake-13b"},  # another model: miss
                     {**llm, "temperature": 0.7},  # another generation parameter: miss
                     {**llm, "timeout_s": 5.0},  # transport settings do not change answers: hit
                     llm):  # the first call's settings again: hit
        describe_profiles([down], settings, cache)
        asked.append(len(server.requests))
    down.phenotypes[0].visual = "eyes slanting upwards"  # the request changes: miss
    describe_profiles([down], llm, cache)
    asked.append(len(server.requests))
    assert asked == [1, 2, 3, 3, 3, 4]
    assert len(list((tmp_path / "cache" / "llm").iterdir())) == 4


def test_an_unreadable_cached_answer_is_an_error_not_deleted(server, llm, down, tmp_path, monkeypatch):
    # a shared cache's file this user cannot read is not a bad answer: deleting it (as an invalid one is) lost it
    from pathlib import Path

    describe_profiles([down], llm, Cache(tmp_path / "cache"))
    (stored,) = (tmp_path / "cache" / "llm").rglob("answer.json")
    real_read = Path.read_text

    def locked(self, *a, **kw):
        if self == stored:  # root reads a chmod-000 file, so the refusal is injected here
            raise PermissionError(13, "Permission denied")
        return real_read(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", locked)
    with pytest.raises(UserError, match=r"answer.json: cannot read the cached LLM answer \(Permission denied\); fix"):
        describe_profiles([down], llm, Cache(tmp_path / "cache"))
    monkeypatch.undo()
    assert stored.is_file() and len(server.requests) == 1


def test_a_cached_answer_is_checked_again_by_todays_rules(server, llm, down, tmp_path, caplog):
    # the cache key holds the schema's shape, not its validators: an answer cached before a rule was added (here:
    # one sentence for every stage) is asked again, and the new answer replaces it
    describe_profiles([down], llm, Cache(tmp_path / "cache"))
    (stored,) = (tmp_path / "cache" / "llm").rglob("answer.json")
    entry = json.loads(stored.read_text())
    old = json.loads(entry["raw"])
    for stage in old["stages"]:
        stage["description"] = "A face with upward-slanting eyes."
    stored.write_text(json.dumps({**entry, "raw": json.dumps(old)}))
    with caplog.at_level(logging.WARNING):
        d = describe_profiles([down], llm, Cache(tmp_path / "cache"))[down.disease_id]
    assert d.source == "llm" and len(server.requests) == 2 and "no longer passes" in caplog.text
    describe_profiles([down], llm, Cache(tmp_path / "cache"))
    assert len(server.requests) == 2  # the replacement is read
    (stored,) = (tmp_path / "cache" / "llm").rglob("answer.json")
    stored.write_text("{")  # an unreadable entry is a miss too, not a traceback
    assert describe_profiles([down], llm, Cache(tmp_path / "cache"))[down.disease_id].source == "llm"
    assert len(server.requests) == 3


def test_a_stale_answer_a_shared_cache_will_not_let_us_remove_is_a_miss(server, llm, down, tmp_path, caplog,
                                                                         monkeypatch):
    from kgface.prompts import descriptions

    describe_profiles([down], llm, Cache(tmp_path / "cache"))
    (stored,) = (tmp_path / "cache" / "llm").rglob("answer.json")
    stored.write_text("{")

    def refuse(path):  # what rmtree raises in a folder this user may read but not write (root ignores chmod)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(descriptions, "remove_path", refuse)
    with caplog.at_level(logging.WARNING):
        d = describe_profiles([down], llm, Cache(tmp_path / "cache"))[down.disease_id]
    assert d.source == "llm" and len(server.requests) == 2 and "cannot remove the stale cached answer" in caplog.text


def test_content_parts_are_read_as_their_text(server, good, llm, down):
    # some servers answer with a list of content parts: their text is the answer (its repr was sent back as JSON)
    server.script = [{"content": [{"type": "text", "text": good()}]}]
    assert describe_profiles([down], llm, None)[down.disease_id].source == "llm"
    # a reasoning part's drafts are not glued onto the answer (they read as a second JSON object)
    server.script = [{"content": [{"type": "reasoning", "text": good(ids=["HP:9999999"])},
                                  {"type": "output_text", "text": good()}]}]
    d = describe_profiles([down], llm, None)[down.disease_id]
    assert d.source == "llm" and d.attempts == 1, d.fallback_reason
    server.script = [{"content": {"text": good()}}]
    reason = describe_profiles([down], llm, None)[down.disease_id].fallback_reason
    assert reason.startswith(
        f"backend error: {server.base_url}/chat/completions answered without choices[0].message.content (TypeError)")
    assert '"content": {"text":' in reason  # what it answered instead, on one line
    # no chat completion at all as the first answer (a proxy's page): the run stops naming llm.base_url (each
    # disease fell back to the template with exit 0) ...
    page = (200, {"Content-Type": "text/html"}, "<html>\n<b>proxy login</b></html>")
    server.script = [page]
    with pytest.raises(UserError, match=r"\(JSONDecodeError\).*It answered: <html> <b>proxy login</b></html> "
                                        rf"\(check llm.base_url={re.escape(server.base_url)}\)"):
        describe_profiles([down], llm, None)
    error = json.dumps({"error": {"message": "model not loaded"}})
    server.script = [(200, {"Content-Type": "application/json"}, error)]
    with pytest.raises(UserError, match="model not loaded"):
        describe_profiles([down], llm, None)
    # ... after one good answer to these settings it is that request's problem: the disease falls back
    other = dataclasses.replace(down, disease_id="OMIM:190685")
    server.script = [good(), page]
    got = sorted(describe_profiles([down, other], llm, None).values(), key=lambda d: d.source)
    assert [d.source for d in got] == ["llm", "template"]
    assert got[1].fallback_reason.endswith("It answered: <html> <b>proxy login</b></html>")


def test_malformed_json_is_retried_with_the_error(server, good, llm, down, tmp_path):
    server.script = ['{"stages": [ oops', good()]
    d = describe_profiles([down], llm, Cache(tmp_path))[down.disease_id]
    assert d.source == "llm" and d.attempts == 2 and len(d.errors) == 1 and "Invalid JSON" in d.errors[0]
    retry = server.requests[1]["body"]["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == '{"stages": [ oops' and "rejected" in retry[3]["content"]
    server.requests.clear()  # a reasoning model's thinking is not echoed back, its answer is
    server.script = ["<think>" + "the eyes... " * 300 + '</think>\n{"stages": [ oops', good()]
    describe_profiles([down], llm, None)
    assert server.requests[1]["body"]["messages"][2]["content"] == '{"stages": [ oops'


def test_wrong_ids_fall_back_to_template_and_are_not_cached(server, good, llm, down, tmp_path):
    server.script = [good(ids=["HP:9999999"])] * 3 + [good()]
    cache = Cache(tmp_path)
    d = describe_profiles([down], llm, cache)[down.disease_id]
    assert d.source == "template" and d.backend == "openai" and d.attempts == 3 and len(d.errors) == 3
    assert "HP:9999999 is not one of the profile's phenotypes" in d.fallback_reason
    assert d.stages[1].description.startswith("A face with Down syndrome, mild stage")
    assert "HP:9999999" in server.requests[1]["body"]["messages"][-1]["content"]  # the error went back
    assert describe_profiles([down], llm, cache)[down.disease_id].source == "llm"  # asked again next run


def test_429_honours_retry_after(server, good, llm, down, tmp_path, waits):
    server.script = [(429, {"Retry-After": "0.3"}), good()]  # fractional seconds keep the test short
    d = describe_profiles([down], llm, Cache(tmp_path))[down.disease_id]
    assert d.source == "llm" and len(server.requests) == 2
    assert server.requests[1]["time"] - server.requests[0]["time"] >= 0.29
    assert waits == [0.3]  # the server's wait, once, not the backoff's


def test_500_retried_then_given_up(server, good, llm, down, tmp_path):
    server.script = [(500, {}), (503, {}), good()]
    assert describe_profiles([down], llm, Cache(tmp_path))[down.disease_id].source == "llm"
    server.script = [(500, {})] * 3
    d = describe_profiles([down], llm, None)[down.disease_id]
    assert d.source == "template" and d.fallback_reason.startswith("backend error: HTTP 500")
    assert "gave up after 3 tries" in d.fallback_reason and len(server.requests) == 6


def test_a_transport_error_while_reading_is_retried(server, good, llm, down, monkeypatch):
    # ssl.SSLError (an OSError, neither a ConnectionError nor an HTTPException) out of response.read() was a
    # traceback: here the first read of the real server's answer fails so
    import ssl

    from kgface.prompts.backends import OpenAIBackend

    real, calls = OpenAIBackend._post, []

    def flaky(self, body, key):
        calls.append(1)
        out = real(self, body, key)
        if len(calls) == 1:
            raise ssl.SSLError("record layer failure")
        return out

    monkeypatch.setattr(OpenAIBackend, "_post", flaky)
    server.script = [good(), good()]
    assert describe_profiles([down], llm, None)[down.disease_id].source == "llm" and len(server.requests) == 2


def test_client_error_is_not_retried(server, llm):
    server.script = [(404, {}, '{"error": {"message": "The model `fake-7b` does not exist"}}')]
    with pytest.raises(UserError, match=r"HTTP 404 .*llm.base_url=.*llm.model=fake-7b.*does not exist"):
        OpenAIBackend(**{k: v for k, v in llm.items() if k not in ("name", "max_attempts")}).complete([])
    assert len(server.requests) == 1


def test_hanging_server_hits_the_timeout(server, llm, down, tmp_path, waits):
    server.script = ["hang"] * 3  # each would hang 5 s: only the client's timeout ends them
    d = describe_profiles([down], llm, Cache(tmp_path))[down.disease_id]
    assert d.source == "template" and "within llm.timeout_s=0.3 s" in d.fallback_reason
    assert "larger llm.timeout_s" in d.fallback_reason
    assert len(server.requests) == 3 and waits == [0.01, 0.02]  # backoff_s doubling between the 3 tries


def test_unreachable_server(llm, down):
    d = describe_profiles([down], {**llm, "base_url": "http://127.0.0.1:9/v1", "max_retries": 0}, None)
    assert d[down.disease_id].source == "template" and "cannot reach" in d[down.disease_id].fallback_reason


def test_rate_limit_spaces_requests(server, llm):
    backend = OpenAIBackend(**{**{k: v for k, v in llm.items() if k not in ("name", "max_attempts")},
                               "min_interval_s": 0.15})
    # the limiter spaces the starts of requests; the server's arrival times add each request's own latency (the
    # first one's connection set-up made a gap of < 0.14 s there once), so the starts are read at the client
    starts, post = [], backend._post
    backend._post = lambda *args, **kwargs: (starts.append(time.monotonic()), post(*args, **kwargs))[1]
    for _ in range(3):
        backend.complete([{"role": "user", "content": "hi"}])
    assert len(starts) == len(server.requests) == 3
    assert all(b - a >= 0.149 for a, b in zip(starts, starts[1:]))


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


def backend_args(llm):
    return {k: v for k, v in llm.items() if k not in ("name", "max_attempts")}


@pytest.mark.parametrize("failure, name", [("close", "RemoteDisconnected"), ("truncate", "IncompleteRead")])
def test_dropped_connection_is_retried_then_falls_back(server, good, llm, down, failure, name):
    # errors while reading the answer escaped complete() as non-LLMError and crashed the run
    server.script = [failure, good()]
    assert describe_profiles([down], llm, None)[down.disease_id].source == "llm" and len(server.requests) == 2
    server.script = [failure] * 3
    d = describe_profiles([down], llm, None)[down.disease_id]
    assert d.source == "template" and len(server.requests) == 5
    assert "failed while reading the answer" in d.fallback_reason and name in d.fallback_reason
    assert "gave up after 3 tries" in d.fallback_reason
    server.script = [failure] * 3
    with pytest.raises(LLMError, match=name):  # an LLMError, which describe_profile turns into the fallback
        OpenAIBackend(**backend_args(llm)).complete([])
    assert len(server.requests) == 8


def test_transport_failure_is_remembered_for_the_rest_of_the_run(server, llm, down, acne, caplog):
    server.script = [(503, {})] * 3
    out = describe_profiles([down, acne], llm, None)
    assert len(server.requests) == 3  # the second disease did not repeat the retry cycle
    assert [d.source for d in out.values()] == ["template", "template"]
    assert out[acne.disease_id].fallback_reason == out[down.disease_id].fallback_reason
    assert "HTTP 503" in out[acne.disease_id].fallback_reason
    assert "remaining diseases of this run use the template" in caplog.text


def test_schema_failures_are_not_remembered(server, good, llm, down, acne):
    # content problems belong to one disease: the next one is still asked
    server.script = ["not json"] * 3 + [(401, {})]
    with pytest.raises(UserError, match="HTTP 401"):
        describe_profiles([down, acne], llm, None)
    assert len(server.requests) == 4


@pytest.mark.parametrize("status, body, match", [
    (401, '{"error": "Incorrect API key provided: KEY"}', r"HTTP 401 .*KGFACE_TEST_KEY \(llm.api_key_env\).*"
                                                         r"Incorrect API key provided: \*\*\*"),
    (403, "forbidden", r"HTTP 403 .*llm.api_key_env.*forbidden"),
    (400, '{"error": "response_format is not supported"}', r"HTTP 400 .*llm.model=fake-7b.*llm.json_mode.*"
                                                           r"response_format is not supported"),
    (404, "Not Found", r"HTTP 404 .*llm.base_url.*/v1.*Not Found"),
])
def test_misconfiguration_stops_the_run_in_one_line(server, llm, down, acne, monkeypatch, status, body, match):
    # every disease would fail alike: no per-disease fallback, no retries; the key never shows in the error
    monkeypatch.setenv("KGFACE_TEST_KEY", SECRET)
    server.script = [(status, {}, body.replace("KEY", SECRET) + " " + "x" * 500)]
    with pytest.raises(UserError, match=match) as info:
        describe_profiles([down, acne], llm, None)
    message = str(info.value)
    assert len(server.requests) == 1 and "\n" not in message and SECRET not in message
    assert message.endswith("x...") and len(message) < 600  # the body's first 200 characters only


def test_a_400_about_one_request_falls_back_for_that_disease_only(server, good, llm, down, acne, tmp_path):
    # a 400 once the server has answered these settings is about that request (a schema retry's conversation
    # grown past the model's context, a content filter): the run goes on
    server.script = [good(), (400, {}, '{"error": "bad request"}')]
    out = describe_profiles([down, acne], llm, None)
    assert out[down.disease_id].source == "llm" and out[acne.disease_id].source == "template"
    reason = out[acne.disease_id].fallback_reason
    assert "HTTP 400" in reason and "this request only" in reason
    server.requests.clear()
    server.script = ["not json", (400, {}, "This model's maximum context length is 4096 tokens"), good()]
    out = describe_profiles([acne, down], llm, None)  # acne's retry (its conversation grown) is too long
    assert [out[d.disease_id].source for d in (acne, down)] == ["template", "llm"] and len(server.requests) == 3
    # an answer of these settings from the cache counts too: the rerun falls back where the first run did, rather
    # than stopping at acne, now its first live request
    server.script = [good(), (400, {}, '{"error": "content filter"}')]
    describe_profiles([down, acne], llm, Cache(tmp_path / "cache"))
    server.requests.clear()
    server.script = [(400, {}, '{"error": "content filter"}')]
    out = describe_profiles([down, acne], llm, Cache(tmp_path / "cache"))
    assert [out[d.disease_id].source for d in (down, acne)] == ["llm", "template"] and len(server.requests) == 1
    # ... but a first request too long for the model is a setting (llm.max_tokens, the model's window): it stops
    server.script = [(400, {}, "This model's maximum context length is 4096 tokens")]
    with pytest.raises(UserError, match="HTTP 400"):
        describe_profiles([down], llm, None)


def test_key_values_and_credentials_in_settings_are_refused_unechoed(server, llm):
    with pytest.raises(UserError, match="llm.api_key_env must be the NAME") as info:
        make_backend({**llm, "api_key_env": SECRET})
    assert SECRET not in str(info.value)
    with pytest.raises(UserError, match="llm.base_url holds credentials") as info:
        make_backend({**llm, "base_url": server.base_url.replace("http://", "http://user:" + SECRET + "@")})
    assert SECRET not in str(info.value)


def test_a_key_with_a_line_end_is_sent_stripped_and_a_broken_one_refused_unechoed(server, llm, down, monkeypatch,
                                                                                 caplog):
    # a CRLF .env leaves "\r" on the value: http.client refused the header with the key in its message, which was
    # logged and stored as the fallback reason for every disease
    monkeypatch.setenv("KGFACE_TEST_KEY", SECRET + "\r\n")
    d = describe_profiles([down], llm, None)[down.disease_id]
    assert d.source == "llm" and server.requests[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"
    monkeypatch.setenv("KGFACE_TEST_KEY", SECRET[:5] + "\x7f" + SECRET[5:])
    with pytest.raises(UserError, match="llm.api_key_env=KGFACE_TEST_KEY: that variable's value holds") as info:
        describe_profiles([down], llm, None)
    assert SECRET[5:] not in str(info.value) and SECRET[5:] not in caplog.text


def test_other_client_errors_fall_back_with_the_body(server, llm, down):
    server.script = [(422, {}, '{"error": "prompt too long for this model"}')]
    d = describe_profiles([down], llm, None)[down.disease_id]
    assert d.source == "template" and "HTTP 422" in d.fallback_reason and "prompt too long" in d.fallback_reason


def test_401_without_a_key_names_the_setting(server, llm, down):
    server.script = [(401, {})]
    with pytest.raises(UserError, match=r"no key was sent \(llm.api_key_env is null\)"):
        describe_profiles([down], {**llm, "api_key_env": None}, None)


def test_redirect_is_not_followed(server, other_server, llm, down, monkeypatch):
    # urllib followed 301/302/303 and copied the Authorization header to the new host
    monkeypatch.setenv("KGFACE_TEST_KEY", SECRET)
    target = other_server.base_url + "/chat/completions"
    server.script = [(302, {"Location": target})]
    with pytest.raises(UserError, match=r"llm.base_url=.*HTTP 302, a redirect to " + target):
        describe_profiles([down], llm, None)
    assert len(server.requests) == 1 and other_server.requests == []


def test_openai_config_sends_no_key_unless_named(server, down, monkeypatch):
    # the default api_key_env was OPENAI_API_KEY: a user's OpenAI key went to whatever base_url was set
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cfg = compose("describe", ["llm=openai", f"llm.base_url={server.base_url}", "llm.model=fake", "llm.timeout_s=2"])
    assert cfg.llm.api_key_env is None
    assert describe_profiles([down], dict(cfg.llm), None)[down.disease_id].source == "llm"
    assert "Authorization" not in server.requests[-1]["headers"]
    named = compose("describe", ["llm=openai", f"llm.base_url={server.base_url}", "llm.model=fake",
                                 "llm.api_key_env=OPENAI_API_KEY"])
    describe_profiles([down], dict(named.llm), None)
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_retry_after_is_honoured_beyond_max_backoff(server, good, llm, down):
    # Retry-After was capped at max_backoff_s: the retry came before the server asked for it
    server.script = [(503, {"Retry-After": "0.4"}), good()]
    d = describe_profiles([down], {**llm, "max_backoff_s": 0.05}, None)[down.disease_id]
    assert d.source == "llm" and server.requests[1]["time"] - server.requests[0]["time"] >= 0.39


def test_retry_after_beyond_its_cap_gives_up_at_once(server, llm, down, acne, waits):
    server.script = [(429, {"Retry-After": "3600"})]
    out = describe_profiles([down, acne], {**llm, "max_retry_after_s": 60}, None)
    assert waits == [] and len(server.requests) == 1  # no wait at all, and the second disease asks nothing
    reason = out[acne.disease_id].fallback_reason
    assert out[acne.disease_id].source == "template" and "wait 3600 s" in reason and "llm.max_retry_after_s" in reason


def test_cut_off_answer_says_to_raise_max_tokens(server, good, llm, down):
    server.script = [{"content": good()[:60], "finish_reason": "length"}]
    d = describe_profiles([down], llm, None)[down.disease_id]
    assert d.source == "template" and len(server.requests) == 1  # the same limit would cut it off again
    assert "cut off at llm.max_tokens=256" in d.fallback_reason and "raise llm.max_tokens" in d.fallback_reason
    assert "Invalid JSON" not in d.fallback_reason


@pytest.mark.parametrize("change, match", [
    ({"model": "???"}, r"^llm.model is not set"),
    ({"model": ""}, r"^llm.model is not set"),
    ({"model": None}, r"^llm.model is not set"),
    ({"base_url": "???"}, r"^llm.base_url is not set"),
    ({"base_url": ""}, r"^llm.base_url is not set"),
    ({"base_url": "127.0.0.1:8000/v1"}, r"^llm.base_url=127.0.0.1:8000/v1 is not an http\(s\) URL"),
    # a settings error, not a network failure retried and fallen back from (InvalidURL at every request)
    ({"base_url": "http://127.0.0.1:8000v1"}, r"^llm.base_url=http://127.0.0.1:8000v1 is not a valid URL \(Port"),
    ({"base_url": "http://127.0.0.1:PORT/v1"}, r"^llm.base_url=http://127.0.0.1:PORT/v1 is not a valid URL"),
    ({"base_url": "http://[::1:8000/v1"}, r"^llm.base_url=http://\[::1:8000/v1 is not a valid URL"),
    ({"base_url": "http://127.0.0.1:8000/my v1"}, r"^llm.base_url='http://127.0.0.1:8000/my v1' holds a space"),
    ({"name": "gpt"}, r"^llm.name='gpt' is unknown"),
    ({"modle": "x"}, r"^llm.modle is not a setting of llm=openai"),
    ({"timeout_s": "soon"}, r"^llm.timeout_s='soon' is not a number"),
    ({"timeout_s": 0}, r"^llm.timeout_s=0 must be > 0"),
    ({"max_retries": 1.5}, r"^llm.max_retries=1.5 is not an integer"),
    ({"max_tokens": 0}, r"^llm.max_tokens=0 must be >= 1"),
    ({"json_mode": "yes"}, r"^llm.json_mode='yes'"),
    ({"max_attempts": 0}, r"^llm.max_attempts=0 must be >= 1"),
])
def test_bad_settings_are_one_line_errors(llm, down, change, match):
    with pytest.raises(UserError, match=match) as info:
        describe_profiles([down], {**llm, **change}, None)
    assert "\n" not in str(info.value)


def test_missing_model_from_the_config_file(server, down):
    # OmegaConf.to_container(resolve=True) passes `model: ???` through as the string '???'
    from omegaconf import OmegaConf

    cfg = compose("describe", ["llm=openai", f"llm.base_url={server.base_url}"])
    with pytest.raises(UserError, match="llm.model is not set"):
        make_backend(OmegaConf.to_container(cfg.llm, resolve=True))
    assert server.requests == []
