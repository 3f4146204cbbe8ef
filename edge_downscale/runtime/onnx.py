"""onnxruntime backend: scores an ONNX export (``edge_downscale.export.onnx``) without torch.

The export is optimum's ``text-generation-with-past`` graph: inputs ``input_ids``,
``attention_mask``, ``position_ids`` (if present) and ``past_key_values.{i}.key/value``; outputs
``logits`` and ``present.*``. Scoring runs the whole sequence in one pass with an *empty* past
(shape (B, kv_heads, 0, head_dim)), so no KV cache is carried between calls. Tokenization uses the
``tokenizers`` library on ``tokenizer.json``; BOS/EOS come from the tokenizer and model configs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Generator, Sequence

import numpy as np

from ..errors import ConfigError, MissingDependencyError, ModelFormatError, require
from .generation import ContextOverflowError
from .base import END_OF_TURN_TEXTS, Backend, log_softmax_gather

MODEL_FILE = "model.onnx"
DEVICES = ("cpu", "cuda", "auto")
_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{path}: unreadable JSON ({e}); re-export the model") from e


def _token_text(value) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _first_id(value) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


class OnnxBackend(Backend):
    """An ONNX causal LM with a KV-cache signature, run by onnxruntime on CPU or CUDA."""

    name = "onnx"
    capabilities = frozenset({"logprobs", "logits", "generate", "streaming", "chat", "gpu"})

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", n_threads: int | None = None,
                 context_length: int | None = None):
        ort = require("onnxruntime", "export")
        tokenizers = require("tokenizers", "export")
        self.model_path = self._find_model(Path(model_dir))
        self.model_dir = self.model_path.parent
        if not self.model_path.is_file():
            raise ModelFormatError(f"{self.model_path} not found: export the model first (edge-downscale export onnx)")
        tok_file = self.model_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelFormatError(f"{tok_file} not found: the ONNX backend needs the tokenizer saved next to the model")

        self.providers = self._providers(ort, device)
        opts = ort.SessionOptions()
        if n_threads:
            opts.intra_op_num_threads = n_threads
        self._session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=self.providers)
        self._tok = tokenizers.Tokenizer.from_file(str(tok_file))

        config = _read_json(self.model_dir / "config.json")
        max_pos = config.get("max_position_embeddings") or 2048
        self.context_length = min(context_length or max_pos, max_pos)
        self._bos, self._eos = self._special_ids(config)
        self._tok_config = _read_json(self.model_dir / "tokenizer_config.json")
        self._inputs = {i.name: i for i in self._session.get_inputs()}
        if "input_ids" not in self._inputs or "logits" not in {o.name for o in self._session.get_outputs()}:
            raise ModelFormatError(f"{self.model_path}: not a causal-LM export (needs input_ids -> logits)")
        self._past = {name: self._empty_past(inp, config) for name, inp in self._inputs.items()
                      if name.startswith("past_key_values.")}

    @staticmethod
    def _find_model(path: Path) -> Path:
        """``path`` itself if a file, else its model.onnx, else its only *.onnx file."""
        if path.is_file() or (path / MODEL_FILE).is_file():
            return path if path.is_file() else path / MODEL_FILE
        candidates = sorted(path.glob("*.onnx")) if path.is_dir() else []
        return candidates[0] if len(candidates) == 1 else path / MODEL_FILE

    @staticmethod
    def _providers(ort, device: str) -> list[str]:
        if device not in DEVICES:
            raise ConfigError(f"unknown device {device!r} for the onnx backend; use one of {', '.join(DEVICES)}")
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if device == "cuda" and not has_cuda:
            raise MissingDependencyError("onnxruntime-gpu", "gpu")
        if device == "cuda" or (device == "auto" and has_cuda):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _special_ids(self, config: dict) -> tuple[int | None, int | None]:
        """(bos, eos) ids: tokenizer_config.json, then special_tokens_map.json, then config.json."""
        tok_cfg = _read_json(self.model_dir / "tokenizer_config.json")
        tok_map = _read_json(self.model_dir / "special_tokens_map.json")
        out = []
        for key in ("bos", "eos"):
            text = _token_text(tok_cfg.get(f"{key}_token")) or _token_text(tok_map.get(f"{key}_token"))
            tid = self._tok.token_to_id(text) if text else None
            out.append(tid if tid is not None else _first_id(config.get(f"{key}_token_id")))
        return out[0], out[1]

    @staticmethod
    def _empty_past(inp, config: dict) -> np.ndarray:
        """Zeros of shape (1, kv_heads, 0, head_dim) in the input's dtype; dims from the graph, else config."""
        shape = inp.shape  # ['batch_size', kv_heads, 'past_sequence_length', head_dim]
        heads = shape[1] if isinstance(shape[1], int) else config.get("num_key_value_heads")
        head_dim = shape[3] if isinstance(shape[3], int) else (
            config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
        dtype = _NP_DTYPES.get(inp.type)
        if dtype is None or heads is None:
            raise ModelFormatError(f"cannot build an empty KV cache for input {inp.name} ({inp.type}, {shape})")
        return np.zeros((1, heads, 0, head_dim), dtype=dtype)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        with self.lock:  # encode_special_tokens is tokenizer state
            self._tok.encode_special_tokens = not special
            return self._tok.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    @property
    def end_ids(self) -> frozenset[int]:
        ids = {self._tok.token_to_id(t) for t in END_OF_TURN_TEXTS} | {self._eos}
        return frozenset(i for i in ids if i is not None)

    @property
    def chat_template(self) -> str | None:
        """tokenizer_config.json's ``chat_template`` (its "default" entry if a list), else chat_template.jinja."""
        template = self._tok_config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        jinja = self.model_dir / "chat_template.jinja"
        if not template and jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
        return template or None

    @property
    def special_tokens(self) -> dict[str, str]:
        out = {}
        for key, tid in (("bos_token", self._bos), ("eos_token", self._eos)):
            if tid is not None:
                out[key] = self._tok.id_to_token(tid) or ""
        return out

    @property
    def prefix_ids(self) -> list[int]:
        tid = self._bos if self._bos is not None else self._eos
        if tid is None:
            raise ModelFormatError(f"{self.model_dir}: no BOS or EOS token id in tokenizer_config.json or config.json")
        return [tid]

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits at every position of ``ids``: (T, V) float32."""
        ids = np.asarray(ids, dtype=np.int64)[None, :]  # (1, T)
        if ids.shape[1] == 0:
            raise ConfigError("cannot score an empty token sequence")
        if ids.shape[1] > self.context_length:
            raise ConfigError(f"sequence of {ids.shape[1]} tokens exceeds the context length {self.context_length}")
        feed = {"input_ids": ids}
        if "attention_mask" in self._inputs:  # covers past (0) + current tokens
            feed["attention_mask"] = np.ones_like(ids)
        if "position_ids" in self._inputs:
            feed["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None, :]
        feed.update(self._past)
        (logits,) = self._session.run(["logits"], feed)  # (1, T, V)
        return np.asarray(logits[0], dtype=np.float32)

    def _decode(self, prompt_ids: list[int]) -> Generator[np.ndarray, int, None]:
        """KV-cache decoding: the prompt in one pass, then one token a step, feeding ``present.*`` back as past."""
        names = [o.name for o in self._session.get_outputs()]
        past = dict(self._past)  # past_key_values.{i}.key/value, starting empty: (1, kv_heads, 0, head_dim)
        step = np.asarray(prompt_ids, dtype=np.int64)[None, :]  # (1, T) the prompt, then (1, 1)
        seen = 0
        while True:
            n = step.shape[1]
            if seen + n > self.context_length:
                raise ContextOverflowError(f"decoding past the context length {self.context_length}")
            feed = {"input_ids": step, **past}
            if "attention_mask" in self._inputs:
                feed["attention_mask"] = np.ones((1, seen + n), dtype=np.int64)
            if "position_ids" in self._inputs:
                feed["position_ids"] = np.arange(seen, seen + n, dtype=np.int64)[None, :]
            out = dict(zip(names, self._session.run(names, feed)))
            seen += n
            past = {k: out[k.replace("past_key_values", "present")] for k in past}
            token = yield np.asarray(out["logits"][0, -1], dtype=np.float32)  # (V,)
            step = np.array([[token]], dtype=np.int64)

    def greedy(self, ids: Sequence[int], max_new_tokens: int, *, stop_at_eos: bool = True) -> list[int]:
        """Greedy token ids after ``ids`` (no detokenization, no metering): parity checks use it."""
        new: list[int] = []
        steps = self._decode(list(ids))
        try:
            logits = next(steps)
            while len(new) < max_new_tokens and len(ids) + len(new) < self.context_length:
                token = int(logits.argmax())
                new.append(token)
                if stop_at_eos and token == self._eos:
                    break
                logits = steps.send(token)
        finally:
            steps.close()
        return new

    def token_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        out = []
        for ids in sequences:
            ids = list(ids)
            logits = self.logits(ids)[:-1]  # (n-1, V): position i predicts ids[i+1]
            out.append(log_softmax_gather(logits, np.asarray(ids[1:], dtype=np.int64)))
        return out

    def close(self) -> None:
        self._session = None
