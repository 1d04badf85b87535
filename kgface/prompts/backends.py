"""LLM backends: `complete(messages) -> str` for a chat.

- `openai`: any OpenAI-compatible chat-completions server (vLLM, llama.cpp server, Ollama, the OpenAI API). The
  key comes from the environment variable named by `api_key_env` (none by default) and is never logged, cached or
  put in an error. Redirects are not followed: they would carry the key to another address.
- `hf`: a local transformers causal LM, from a folder or a single .gguf file (dequantised by transformers).
- `none` has no backend object: describe_profiles uses the template descriptions directly.

Transport problems (timeouts, dropped connections, HTTP 429/5xx) are retried here with exponential backoff,
honouring Retry-After; what is left raises `LLMError`, and the backend remembers it: later calls in the same run
fail at once with the same message instead of repeating the retry cycle for every disease. Settings the server
rejects (HTTP 400/401/403/404/405, a redirect), and a first answer that is no chat completion at all (a proxy's
login page), raise `UserError`: every disease would fail the same way. Bad *content* is the caller's business
(schema retries).
"""
from __future__ import annotations

import email.utils
import http.client
import importlib.util
import inspect
import ipaddress
import json
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from kgface.cache import file_fingerprint
from kgface.errors import UserError

log = logging.getLogger(__name__)

DESCRIBE_KEYS = ("max_attempts",)  # llm.* keys read by describe_profiles, not by a backend
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# the request itself is wrong (key, model, URL, response_format): every disease would fail alike, so stop the run
CONFIG_STATUS = {400, 401, 403, 404, 405}
# ... except a 400 after the server has answered these settings (this run, or a cached answer of them): that request
# (a schema retry's conversation grown past the model's window, a content filter) is the problem, not the settings.
# On a first request "too long" is a setting (llm.max_tokens or the model's window) and stops the run
BODY_CHARS = 200  # how much of a server's error body an error shows
MISSING = "???"  # OmegaConf's mandatory value, which to_container(resolve=True) passes through as a string
# files of a transformers folder that shape its answers (config, tokenizer and chat template, weights)
HF_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "chat_template.json", "chat_template.jinja", "tokenizer.model",
                  "vocab.json", "merges.txt", "added_tokens.json")
HF_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class LLMError(RuntimeError):
    """The backend gave no answer (after its own retries)."""


class AnswerCutOff(LLMError):
    """The model stopped at its token limit (the server's max_tokens, hf's max_new_tokens): the answer is
    incomplete, and asking again with the same limit is too."""


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _setting(key: str, value, kind: type, minimum: float | None = None, above: bool = False):
    """A numeric llm.* setting as `kind`, or a one-line UserError naming llm.<key>."""
    try:
        if isinstance(value, bool) or value is None or (kind is int and float(value) != int(float(value))):
            raise ValueError
        number = int(float(value)) if kind is int else float(value)
        if not math.isfinite(number):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"llm.{key}={value!r} is not a{'n integer' if kind is int else ' number'}; "
                        f"set llm.{key} to one") from None
    if minimum is not None and (number <= minimum if above else number < minimum):
        raise UserError(f"llm.{key}={value!r} must be {'>' if above else '>='} {minimum:g}")
    return number


def _required(key: str, value, what: str) -> str:
    if value is None or not str(value).strip() or str(value).strip() == MISSING:
        raise UserError(f"llm.{key} is not set: give {what} (llm.{key}=...)")
    return str(value).strip()


def _loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Report a redirect as the HTTPError it is: following it would copy the Authorization header to its target."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _body(exc: urllib.error.HTTPError, secret: str | None) -> str:
    """The first BODY_CHARS characters of an error response, on one line, without the API key."""
    try:
        text = exc.read(4 * BODY_CHARS).decode("utf-8", "replace")
    except (AttributeError, OSError, http.client.HTTPException, ValueError):
        return ""
    return _snippet(text, secret)


def _snippet(text: str, secret: str | None) -> str:
    """The first BODY_CHARS characters of a server's text, on one line, without the API key."""
    text = " ".join(text.split())
    if secret:
        text = text.replace(secret, "***")
    return text[:BODY_CHARS] + ("..." if len(text) > BODY_CHARS else "")


class OpenAIBackend:
    name = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 max_retry_after_s: float = 300.0, min_interval_s: float = 0.0, temperature: float = 0.0,
                 max_tokens: int = 1024, json_mode: bool = True, seed: int | None = None):
        base_url = _required("base_url", base_url, "the server's OpenAI-compatible URL, e.g. http://127.0.0.1:8000/v1")
        self.model = _required("model", model, "the server's model name, e.g. Qwen/Qwen2.5-7B-Instruct")
        try:  # a port that is no number (":8000v1", ":PORT") or a bad IPv6 host raise ValueError here, not later
            parts = urllib.parse.urlsplit(base_url)
            parts.port, parts.hostname
        except ValueError as exc:
            raise UserError(f"llm.base_url={base_url} is not a valid URL ({exc}); e.g. http://127.0.0.1:8000/v1"
                            ) from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UserError(f"llm.base_url={base_url} is not an http(s) URL; e.g. http://127.0.0.1:8000/v1")
        if re.search(r"[\x00-\x20\x7f]", base_url):  # http.client refuses them at every request (InvalidURL)
            raise UserError(f"llm.base_url={base_url!r} holds a space or control character; give the URL without it")
        if parts.username is not None or parts.password is not None:
            # the URL is logged, put in errors and cache metadata: credentials belong in llm.api_key_env
            raise UserError("llm.base_url holds credentials (user:password@); give the URL without them and the "
                            "key through llm.api_key_env")
        self.base_url = base_url
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = None if api_key_env in (None, "", MISSING) else str(api_key_env)
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            # never echoed: a key pasted here by mistake would land in the log
            raise UserError("llm.api_key_env must be the NAME of an environment variable holding the key (e.g. "
                            "OPENAI_API_KEY), not the key itself")
        self.timeout_s = _setting("timeout_s", timeout_s, float, 0, above=True)
        self.max_retries = _setting("max_retries", max_retries, int, 0)
        self.backoff_s = _setting("backoff_s", backoff_s, float, 0)
        self.max_backoff_s = _setting("max_backoff_s", max_backoff_s, float, 0)
        self.max_retry_after_s = _setting("max_retry_after_s", max_retry_after_s, float, 0)
        self.min_interval_s = _setting("min_interval_s", min_interval_s, float, 0)
        self.temperature = _setting("temperature", temperature, float, 0)
        self.max_tokens = _setting("max_tokens", max_tokens, int, 1)
        if not isinstance(json_mode, bool):
            raise UserError(f"llm.json_mode={json_mode!r}: use true or false")
        self.json_mode = json_mode
        # sent as the request's seed (OpenAI, vLLM and llama.cpp sample by it; others ignore it): a fresh cache then
        # asks for the same sentences at temperature > 0
        self.seed = None if seed is None else _setting("seed", seed, int, 0)
        self._last_request = -float("inf")
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._warned: set[str] = set()
        self.failed: str | None = None  # a transport failure that outlived the retries: the rest of the run skips
        self.answered = 0  # answers to these settings (live or cached): after one, a 400 is about the request

    def params(self) -> dict:
        """What shapes the answer (and so keys the cache); not the key, timeouts or retry policy."""
        return {"url": self.url, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "json_mode": self.json_mode, **({"seed": self.seed} if self.seed is not None else {})}

    def _warn_once(self, what: str, *args):
        if what not in self._warned:
            self._warned.add(what)
            log.warning(what, *args)

    def _key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = (os.environ.get(self.api_key_env) or "").strip()  # a CRLF .env leaves a \r the header refuses
        if key and (any(ord(c) < 32 or ord(c) == 127 for c in key) or not key.isascii()):
            # http.client would refuse the header with the key in its message, which the retry loop then logged
            raise UserError(f"llm.api_key_env={self.api_key_env}: that variable's value holds control or non-ASCII "
                            "characters, not an API key's; set it again (its value is not shown)")
        if not key:  # local servers often need no key; say which variable, never a value
            self._warn_once("llm.api_key_env=%s but that environment variable is not set; sending no API key",
                            self.api_key_env)
            return None
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme == "http" and not _loopback(parts.hostname):
            self._warn_once("sending the API key from %s over plain http to %s; use https",
                            self.api_key_env, parts.hostname)
        return key

    def _headers(self, key: str | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _wait_turn(self):
        """Rate limit: at least min_interval_s between the starts of two requests."""
        with self._lock:
            delay = self._last_request + self.min_interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._last_request = time.monotonic()

    def _post(self, body: bytes, key: str | None) -> str:
        request = urllib.request.Request(self.url, data=body, headers=self._headers(key), method="POST")
        with self._opener.open(request, timeout=self.timeout_s) as response:
            return response.read().decode("utf-8")

    def _config_error(self, exc: urllib.error.HTTPError, body: str, key: str | None) -> UserError:
        """A one-line error for a request the server refuses: which setting to check, and what the server said."""
        said = f"; the server said: {body}" if body else ""
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "another address") if exc.headers else "another address"
            return UserError(f"llm.base_url={self.base_url} answers HTTP {exc.code}, a redirect to {where}; "
                             "kgface does not follow redirects (they would carry the API key elsewhere): set "
                             "llm.base_url to the final URL")
        if exc.code in (401, 403):
            if not self.api_key_env:
                hint = "no key was sent (llm.api_key_env is null): set llm.api_key_env=NAME of the variable holding it"
            elif key is None:
                hint = f"no key was sent: the environment variable {self.api_key_env} (llm.api_key_env) is not set"
            else:
                hint = f"check the key in {self.api_key_env} (llm.api_key_env) and llm.base_url"
            return UserError(f"HTTP {exc.code} from {self.url}: {hint}{said}")
        if exc.code in (404, 405):
            return UserError(f"HTTP {exc.code} from {self.url}: check llm.base_url={self.base_url} (usually ends "
                             f"in /v1) and llm.model={self.model}{said}")
        return UserError(f"HTTP {exc.code} from {self.url}: the server rejects the request; check "
                         f"llm.model={self.model}, llm.base_url and llm.json_mode (false for servers without "
                         f"response_format){said}")

    def complete(self, messages: list[dict]) -> str:
        if self.failed:  # the server already failed past its retries in this run: do not wait it out again
            raise LLMError(self.failed)
        payload = {"model": self.model, "messages": messages, "temperature": self.temperature,
                   "max_tokens": self.max_tokens}
        if self.json_mode:
            payload["response_format"] = {"type": "json_object"}
        if self.seed is not None:
            payload["seed"] = self.seed
        body = json.dumps(payload).encode("utf-8")
        problem = ""
        for attempt in range(self.max_retries + 1):
            self._wait_turn()
            wait = None
            key = self._key()
            raw, data = "", None
            try:
                raw = self._post(body, key)
                data = json.loads(raw)
                choice = data["choices"][0]
                content = _message_text(choice["message"]["content"])
            except urllib.error.HTTPError as exc:
                text = _body(exc, key)
                if exc.code == 400 and self.answered:
                    raise LLMError(f"HTTP 400 from {self.url}: {text or exc.reason} (this request only: if it is "
                                   "too long for the model's context, lower llm.max_attempts or llm.max_tokens, or "
                                   "serve a longer context)") from None
                if exc.code not in RETRY_STATUS:
                    if exc.code in CONFIG_STATUS or 300 <= exc.code < 400:
                        raise self._config_error(exc, text, key) from None
                    raise LLMError(f"HTTP {exc.code} from {self.url}: {text or exc.reason}") from None
                problem = f"HTTP {exc.code} from {self.url}" + (f" ({text})" if text else "")
                wait = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                if wait is not None and wait > self.max_retry_after_s:
                    self.failed = (f"{problem}: the server asks to wait {wait:.0f} s (Retry-After), more than "
                                   f"llm.max_retry_after_s={self.max_retry_after_s:g}; try later or raise it")
                    log.warning("%s; the remaining diseases of this run use the template", self.failed)
                    raise LLMError(self.failed) from None
            except (TimeoutError, socket.timeout) as exc:
                problem = (f"no answer from {self.url} within llm.timeout_s={self.timeout_s:g} s "
                           f"({exc.__class__.__name__}; a slow model needs a larger llm.timeout_s)")
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    problem = (f"no answer from {self.url} within llm.timeout_s={self.timeout_s:g} s "
                               "(a slow model needs a larger llm.timeout_s)")
                else:
                    problem = f"cannot reach {self.url}: {exc.reason}"
            except http.client.InvalidURL as exc:  # a settings error: retrying and falling back would hide it
                raise UserError(f"llm.base_url={self.base_url}: {exc}") from None
            except (ConnectionError, http.client.HTTPException) as exc:
                # raised while reading the response (urllib wraps only errors of sending): a dropped connection
                # (RemoteDisconnected, ConnectionResetError), a cut body (IncompleteRead), a garbled status line
                problem = f"connection to {self.url} failed while reading the answer ({exc.__class__.__name__})"
            except OSError as exc:  # any other transport failure (ssl.SSLError mid-read): retried, not a traceback
                problem = f"connection to {self.url} failed ({exc.__class__.__name__})"
            except (KeyError, IndexError, TypeError, ValueError) as exc:  # the type only: never a header's value
                said = _snippet(raw, key)  # what it sent instead (a proxy's page, an error object)
                text = (f"{self.url} answered without choices[0].message.content ({type(exc).__name__}); "
                        "is it an OpenAI-compatible chat-completions server?"
                        + (f" It answered: {said}" if said else ""))
                if not self.answered and not _completion_shaped(data):
                    # the first answer to these settings is no chat completion at all (a proxy's page, another
                    # service): every disease would get the same, each falling back to the template with exit 0
                    raise UserError(f"{text} (check llm.base_url={self.base_url})") from None
                raise LLMError(text) from None
            else:
                if isinstance(choice, dict) and choice.get("finish_reason") == "length":
                    raise AnswerCutOff(f"the answer was cut off at llm.max_tokens={self.max_tokens} tokens "
                                       "(finish_reason=length); raise llm.max_tokens")
                self.answered += 1
                return content
            if attempt == self.max_retries:
                break
            if wait is None:  # our own backoff is capped; a server's Retry-After is honoured up to its own cap
                wait = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
            log.warning("%s; retry %d/%d in %.2f s", problem, attempt + 1, self.max_retries, wait)
            time.sleep(wait)
        self.failed = f"{problem} (gave up after {self.max_retries + 1} tries)"
        log.warning("%s; the remaining diseases of this run use the template without asking again", self.failed)
        raise LLMError(self.failed)


def _completion_shaped(data) -> bool:
    """A chat completion whose message lacks usable content (null after a refusal, an unknown shape) is that
    request's problem; anything else answering a chat-completions request is the server's."""
    choices = data.get("choices") if isinstance(data, dict) else None
    return isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict) and "message" in choices[0]


def _message_text(content) -> str:
    """A chat message's content as text: a string, or a list of content parts (`{"type": "text", "text": ...}`) as
    some servers send, of which the text parts count (not "reasoning" ones); anything else is a TypeError (the caller
    names the missing field), never its Python repr."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in content):
        # only the answer's parts: a reasoning part's drafts glued on read as a second JSON object, or as the answer
        return "".join(p.get("text", "") for p in content if p.get("type", "text") in ("text", "output_text"))
    raise TypeError(type(content).__name__)


def _hf_fingerprint(path: Path) -> dict:
    """What identifies the model's answers beyond its name: the .gguf file, or the folder's config, tokenizer and
    weight files (kgface.cache.file_fingerprint), so replaced weights do not reuse cached answers."""
    if path.is_file():  # a .gguf: transformers also reads a tokenizer or chat template lying beside it
        beside = sorted(p for p in path.parent.iterdir() if p.is_file() and p.name in HF_MODEL_FILES)
        return {path.name: file_fingerprint(path), **{p.name: file_fingerprint(p) for p in beside}}
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.name in HF_MODEL_FILES
                                                                 or p.name.endswith(HF_WEIGHT_SUFFIXES)
                                                                 or p.name.endswith(".index.json")))
    return {p.name: file_fingerprint(p) for p in files}


def _device(value) -> str:
    """llm.device as a torch device string, refused in one line when torch does not know it or cannot use it."""
    import torch

    try:
        device = torch.device(str(value))
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"llm.device={value!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"llm.device={value} but torch sees no CUDA device here; use llm.device=cpu")
    return str(device)


def _without_system(messages: list[dict]) -> list[dict]:
    """The system turns folded into the first user turn, for chat templates that refuse a system role."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = system + "\n\n" + rest[0]["content"]
    elif system:
        rest.insert(0, {"role": "user", "content": system})
    return rest


class HFBackend:
    """A local transformers causal LM. `model` is a folder, or a .gguf file (needs the `gguf` package)."""

    name = "hf"

    def __init__(self, model: str, max_new_tokens: int = 512, temperature: float = 0.0, device: str = "cpu",
                 seed: int = 0):
        self.model = _required("model", model, "a transformers model folder or a .gguf file")
        path = Path(self.model).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            if importlib.util.find_spec("gguf") is None:
                raise UserError(f"llm.model={self.model} is a .gguf file, which needs the gguf package: "
                                "pip install gguf")
        elif not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "is neither a .gguf file nor a folder with config.json"
            raise UserError(f"llm.model={self.model} {what}; give a transformers model folder or a .gguf file")
        self.path = path
        self.max_new_tokens = _setting("max_new_tokens", max_new_tokens, int, 1)
        self.temperature = _setting("temperature", temperature, float, 0)
        self.device, self.seed = _device(device), _setting("seed", seed, int)
        self._lm = self._tokenizer = None
        self.answered = 0  # answers generated in this run: after one, a failing request is that request's problem

    def params(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "seed": self.seed,
                "files": _hf_fingerprint(self.path)}

    def _load(self):
        if self._lm is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"gguf_file": self.path.name} if self.path.suffix == ".gguf" else {}
        folder = str(self.path.parent if kwargs else self.path)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
            self._lm = AutoModelForCausalLM.from_pretrained(folder, **kwargs).to(self.device).eval()
        except (OSError, ValueError, ImportError, RuntimeError) as exc:
            # a broken folder, a missing tokenizer package or a device it cannot go to fails every disease alike
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(f"llm.model={self.model}: transformers cannot load it on llm.device={self.device} "
                            f"({first})") from None

    def _input_ids(self, messages: list[dict]):
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            from jinja2.exceptions import TemplateError

            try:
                enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)
            except TemplateError:  # templates without a system role (Gemma): the instructions open the first turn
                try:
                    enc = tok.apply_chat_template(_without_system(messages), add_generation_prompt=True,
                                                  return_tensors="pt", return_dict=True)
                except TemplateError as exc:
                    raise UserError(f"llm.model={self.model}: its chat template refuses kgface's request, with or "
                                    f"without a system turn ({str(exc).splitlines()[0] if str(exc) else exc!r}); use "
                                    "an instruction-tuned model") from None
            return enc["input_ids"]
        # a tokenizer without a chat template: plain role-prefixed turns
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return tok(text, return_tensors="pt")["input_ids"]

    def complete(self, messages: list[dict]) -> str:
        new = self.generate_ids(messages)
        self.answered += 1
        text = self._tokenizer.decode(new, skip_special_tokens=True)
        if len(new) >= self.max_new_tokens and new[-1] not in self._stop_ids() and not _opens_whole_object(text):
            # the twin of the server's finish_reason=length: a cut JSON answer, and the same limit cuts it again
            # (a whole object that the model talked past, its end-of-turn token unknown to the generation config,
            # is an answer: the schema judges it)
            raise AnswerCutOff(f"the answer was cut off at llm.max_new_tokens={self.max_new_tokens} tokens "
                               "(no end-of-sequence token); raise llm.max_new_tokens")
        return text

    def generate_ids(self, messages: list[dict]) -> list[int]:
        """The answer's token ids (seeded; greedy at temperature 0)."""
        import torch

        self._load()
        ids = self._input_ids(messages).to(self.device)
        sample = self.temperature > 0
        kwargs = {"do_sample": sample, "max_new_tokens": self.max_new_tokens}
        if sample:
            kwargs["temperature"] = self.temperature
        pad = self._tokenizer.pad_token_id
        kwargs["pad_token_id"] = pad if pad is not None else self._tokenizer.eos_token_id
        # seeded per request on a fork of torch's generators: the caller's stream after describing must not depend
        # on whether the answers came from the cache
        # manual_seed reseeds every CUDA device's generator, not only the LLM's: fork them all
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                out = self._lm.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        except (RuntimeError, IndexError, ValueError) as exc:  # out of memory, a prompt past the model's positions
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            text = (f"llm.model={self.model}: generating on llm.device={self.device} failed for a {ids.shape[1]}-token "
                    f"request ({type(exc).__name__}: {first}); a model with a longer context, more memory, or llm=none")
            # a first request that fails is the settings' problem (every disease would fail alike): the run stops;
            # a retry's conversation grown past the context, or a failure after answers, is this disease's: it
            # falls back to the template with the reason (as the openai backend reads a 400)
            if self.answered or len(messages) > 2:
                raise LLMError(text) from None
            raise UserError(text) from None
        return out[0, ids.shape[1]:].tolist()

    def _stop_ids(self) -> set[int]:
        """Token ids that end an answer: the generation config's eos (an id or a list) and the tokenizer's."""
        ids = set()
        for value in (getattr(self._lm.generation_config, "eos_token_id", None), self._tokenizer.eos_token_id):
            ids.update(v for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None)
        return ids


def _opens_whole_object(text: str) -> bool:
    """Whether the reply's first JSON object (after any thinking) is complete."""
    from .schema import strip_thinking

    text = strip_thinking(text)
    start = text.find("{")
    try:
        return start >= 0 and bool(json.JSONDecoder().raw_decode(text, start))
    except (ValueError, RecursionError):
        return False


BACKENDS = {"openai": OpenAIBackend, "hf": HFBackend}


def make_backend(llm_cfg) -> OpenAIBackend | HFBackend | None:
    """The backend named by `llm.name` (None for `none`); a missing, unknown or malformed setting is a one-line
    UserError naming its llm.* key, here, before any disease is described."""
    cfg = {k: v for k, v in dict(llm_cfg or {}).items() if k not in DESCRIBE_KEYS}
    _setting("max_attempts", dict(llm_cfg or {}).get("max_attempts", 3), int, 1)  # read later, checked here
    name = cfg.pop("name", "none")
    if name in (None, "none"):
        if cfg:  # llm=none +llm.model=gpt: read by nothing, said (as for the other backends)
            raise UserError(f"llm.{sorted(cfg)[0]} is not a setting of llm=none (it calls no model); known: "
                            f"{', '.join(DESCRIBE_KEYS)}")
        return None
    cls = BACKENDS.get(name)
    if cls is None:
        raise UserError(f"llm.name={name!r} is unknown; use llm=none, llm=openai or llm=hf")
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise UserError(f"llm.{unknown[0]} is not a setting of llm={name}; known: "
                        f"{', '.join(known + list(DESCRIBE_KEYS))}")
    return cls(**cfg)
