"""LLM backends: `complete(messages) -> str` for a chat.

- `openai`: any OpenAI-compatible chat-completions server (vLLM, llama.cpp server, Ollama, the OpenAI API). The
  key comes from the environment variable named by `api_key_env` and is never logged, cached or put in an error.
- `hf`: a local transformers causal LM, from a folder or a single .gguf file (dequantised by transformers).
- `none` has no backend object: describe_profiles uses the template descriptions directly.

Transport problems (timeouts, HTTP 429/5xx, refused connections) are retried here with exponential backoff,
honouring Retry-After; what is left raises `LLMError`. Bad *content* is the caller's business (schema retries).
"""
from __future__ import annotations

import email.utils
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

DESCRIBE_KEYS = ("max_attempts",)  # llm.* keys read by describe_profiles, not by a backend
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMError(RuntimeError):
    """The backend gave no answer (after its own retries)."""


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


class OpenAIBackend:
    name = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, max_retries: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 min_interval_s: float = 0.0, temperature: float = 0.2, max_tokens: int = 1024,
                 json_mode: bool = True):
        if not base_url or not model:
            raise ValueError("llm=openai needs llm.base_url (e.g. http://127.0.0.1:8000/v1) and llm.model")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = str(model)
        self.api_key_env = api_key_env
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.min_interval_s = float(min_interval_s)
        self.temperature, self.max_tokens, self.json_mode = float(temperature), int(max_tokens), bool(json_mode)
        self._last_request = -float("inf")
        self._lock = threading.Lock()

    def params(self) -> dict:
        """What shapes the answer (and so keys the cache); not the key, timeouts or retry policy."""
        return {"url": self.url, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "json_mode": self.json_mode}

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            else:  # local servers often need no key; say which variable, never a value
                log.debug("environment variable %s is not set; sending no API key", self.api_key_env)
        return headers

    def _wait_turn(self):
        """Rate limit: at least min_interval_s between the starts of two requests."""
        with self._lock:
            delay = self._last_request + self.min_interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._last_request = time.monotonic()

    def _post(self, body: bytes) -> dict:
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))

    def complete(self, messages: list[dict]) -> str:
        payload = {"model": self.model, "messages": messages, "temperature": self.temperature,
                   "max_tokens": self.max_tokens}
        if self.json_mode:
            payload["response_format"] = {"type": "json_object"}
        body = json.dumps(payload).encode("utf-8")
        problem = ""
        for attempt in range(self.max_retries + 1):
            self._wait_turn()
            wait = None
            try:
                data = self._post(body)
                return str(data["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code} from {self.url}"
                if exc.code not in RETRY_STATUS:
                    raise LLMError(f"{problem}: {exc.reason}; check llm.base_url and llm.model") from None
                wait = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            except (TimeoutError, socket.timeout) as exc:
                problem = f"no answer from {self.url} within {self.timeout_s:g} s ({exc.__class__.__name__})"
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    problem = f"no answer from {self.url} within {self.timeout_s:g} s"
                else:
                    problem = f"cannot reach {self.url}: {exc.reason}"
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise LLMError(f"{self.url} answered without choices[0].message.content ({exc!r}); "
                               "is it an OpenAI-compatible chat-completions server?") from None
            if attempt == self.max_retries:
                break
            if wait is None:
                wait = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
            wait = min(wait, self.max_backoff_s)
            log.warning("%s; retry %d/%d in %.2f s", problem, attempt + 1, self.max_retries, wait)
            time.sleep(wait)
        raise LLMError(f"{problem} (gave up after {self.max_retries + 1} tries)")


class HFBackend:
    """A local transformers causal LM. `model` is a folder, or a .gguf file (needs the `gguf` package)."""

    name = "hf"

    def __init__(self, model: str, max_new_tokens: int = 512, temperature: float = 0.0, device: str = "cpu",
                 seed: int = 0):
        if not model:
            raise ValueError("llm=hf needs llm.model: a transformers model folder or a .gguf file")
        self.model = str(model)
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self.device, self.seed = device, int(seed)
        self._lm = self._tokenizer = None

    def params(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "seed": self.seed}

    def _load(self):
        if self._lm is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(self.model).expanduser()
        if not path.exists():
            raise LLMError(f"llm.model {path} does not exist; give a transformers model folder or a .gguf file")
        kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
        folder = str(path.parent if kwargs else path)
        self._tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        self._lm = AutoModelForCausalLM.from_pretrained(folder, **kwargs).to(self.device).eval()

    def _input_ids(self, messages: list[dict]):
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)
            return enc["input_ids"]
        # a tokenizer without a chat template: plain role-prefixed turns
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return tok(text, return_tensors="pt")["input_ids"]

    def complete(self, messages: list[dict]) -> str:
        import torch

        self._load()
        ids = self._input_ids(messages).to(self.device)
        sample = self.temperature > 0
        kwargs = {"do_sample": sample, "max_new_tokens": self.max_new_tokens}
        if sample:
            kwargs["temperature"] = self.temperature
        pad = self._tokenizer.pad_token_id
        kwargs["pad_token_id"] = pad if pad is not None else self._tokenizer.eos_token_id
        torch.manual_seed(self.seed)
        with torch.no_grad():
            out = self._lm.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        return self._tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def make_backend(llm_cfg) -> OpenAIBackend | HFBackend | None:
    """The backend named by `llm.name` (None for `none`); an unknown key fails here, not silently."""
    cfg = {k: v for k, v in dict(llm_cfg or {}).items() if k not in DESCRIBE_KEYS}
    name = cfg.pop("name", "none")
    if name in (None, "none"):
        return None
    if name == "openai":
        return OpenAIBackend(**cfg)
    if name == "hf":
        return HFBackend(**cfg)
    raise ValueError(f"llm.name must be none, openai or hf, got {name!r}")
