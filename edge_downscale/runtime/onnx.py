"""onnxruntime backend: scores an ONNX export (``edge_downscale.export.onnx``) without torch.

The export is optimum's ``text-generation-with-past`` graph: inputs ``input_ids``,
``attention_mask``, ``position_ids`` (if present) and ``past_key_values.{i}.key/value``; outputs
``logits`` and ``present.*``. Scoring runs the whole sequence in one pass with an *empty* past
(shape (B, kv_heads, 0, head_dim)), so no KV cache is carried between calls. Tokenization uses the
``tokenizers`` library on ``tokenizer.json``; BOS/EOS come from the tokenizer and model configs.
"""
from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Generator, Sequence

import numpy as np

from ..artifacts import MODEL_FILES
from ..errors import ConfigError, MissingDependencyError, ModelFormatError, require
from .generation import ContextOverflowError
from .base import END_OF_TURN_TEXTS, Backend, log_softmax_gather

MODEL_FILE = MODEL_FILES["onnx"]
GENAI_CONFIG = "genai_config.json"  # written by onnxruntime-genai's model builder next to a fused export
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


class _BoundDecoder:
    """One generation's onnxruntime IOBinding state: the KV cache as OrtValues on the session's device.

    Each :meth:`run` binds the new tokens, views of the attention-mask / position buffers (filled
    once), the previous step's ``present.*`` OrtValues as ``past_key_values.*`` and fresh
    ``present.*`` outputs that onnxruntime allocates on the device: the cache never passes through
    numpy. A decode step's logits go to one preallocated (1, 1, V) output (on CPU a numpy buffer
    written in place); of the prompt's (1, T, V) logits only the last row is read (in place on CPU).

    A graph whose attention is onnxruntime's ``GroupQueryAttention`` (the fused export; its
    ``genai_config.json`` says ``past_present_share_buffer``) decodes on CPU with one KV buffer per
    ``past``/``present`` pair, (1, kv_heads, capacity, head_dim), bound as both: the operator writes
    the new positions in place and attends over the first ``attention_mask``-many, so no step copies
    the cache. The capacity starts at :attr:`capacity` positions and doubles (a copy) when full.
    """

    capacity = 256  # KV positions first allocated for a shared buffer

    def __init__(self, backend: "OnnxBackend"):
        self._ort = ort = require("onnxruntime", "export")
        self._session = session = backend._session
        self.limit = backend.context_length
        self.vocab, self.logits_dtype = backend._logits_shape
        cuda = session.get_providers()[0] == "CUDAExecutionProvider"
        self.device = "cuda" if cuda else "cpu"
        self.device_id = int(session.get_provider_options().get("CUDAExecutionProvider", {}).get("device_id", 0)) if cuda else 0
        inputs = backend._inputs
        self.mask = np.ones((1, self.limit), dtype=np.int64) if "attention_mask" in inputs else None
        self.positions = np.arange(self.limit, dtype=np.int64)[None, :] if "position_ids" in inputs else None
        self.past_names = list(backend._past)
        self.present_names = [name.replace("past_key_values", "present", 1) for name in self.past_names]
        outputs = {o.name for o in session.get_outputs()}
        if not self.past_names or not outputs.issuperset(self.present_names):
            raise ModelFormatError(f"{backend.model_path}: no KV cache (past_key_values.* -> present.*) to decode "
                                   "with; export with the text-generation-with-past task (edge-downscale export onnx)")
        self.seen = 0
        self.binding = binding = session.io_binding()
        binding.bind_output("logits", self.device, self.device_id)  # first, so get_outputs()[0] is the logits
        self._kv: dict[str, np.ndarray] | None = None  # the shared buffers, by past name
        if backend.shares_kv_buffer and not cuda:
            self._grow(min(self.capacity, self.limit), backend._past)
        else:
            for name, empty in backend._past.items():  # (1, kv_heads, 0, head_dim), copied to the device if need be
                binding.bind_cpu_input(name, empty)
        self._step_logits = np.empty((1, 1, self.vocab), dtype=self.logits_dtype)  # CPU: written in place
        self._step_value = (ort.OrtValue.ortvalue_from_numpy(self._step_logits) if not cuda else
                            ort.OrtValue.ortvalue_from_shape_and_type((1, 1, self.vocab), self.logits_dtype,
                                                                      self.device, self.device_id))
        self._itemsize = np.dtype(self.logits_dtype).itemsize
        self._alive = None  # the input ids bound in the last run (onnxruntime reads numpy memory in place on CPU)

    def run(self, ids: np.ndarray) -> np.ndarray:
        """Run ``ids`` (1, n) int64 after the tokens seen so far; the last position's logits (V,) float32."""
        n = ids.shape[1]
        end = self.seen + n
        if end > self.limit:
            raise ContextOverflowError(f"decoding past the context length {self.limit}")
        binding = self.binding
        if self._kv is not None and end > self._kv_capacity:
            self._grow(min(max(2 * self._kv_capacity, end), self.limit), self._kv)
        binding.bind_cpu_input("input_ids", ids)
        if self.mask is not None:  # covers past + current tokens
            binding.bind_cpu_input("attention_mask", self.mask[:, :end])
        if self.positions is not None:
            binding.bind_cpu_input("position_ids", self.positions[:, self.seen:end])
        if n == 1:  # a decode step: into the preallocated (1, 1, V) output
            binding.bind_ortvalue_output("logits", self._step_value)
        else:  # the prompt (1, n, V): onnxruntime allocates it (from its arena, memory already mapped)
            binding.bind_output("logits", self.device, self.device_id)
        if self._kv is None:
            for name in self.present_names:  # a fresh output each step: the previous one is now an input
                binding.bind_output(name, self.device, self.device_id)
        self._alive = ids
        self._session.run_with_iobinding(binding)
        outputs = binding.get_outputs()  # in binding order: logits, then present.*
        if self._kv is None:
            for name, present in zip(self.past_names, outputs[1:]):
                binding.bind_ortvalue_input(name, present)
        self.seen = end
        if n == 1 and self.device == "cpu":
            return self._step_logits[0, 0].astype(np.float32)  # (V,), a copy
        if self.device == "cpu":  # read the last row in place: the prompt's logits are n x V floats
            row_bytes = self.vocab * self._itemsize
            row = (ctypes.c_char * row_bytes).from_address(outputs[0].data_ptr() + (n - 1) * row_bytes)
            return np.frombuffer(row, dtype=self.logits_dtype).astype(np.float32)
        return np.asarray(outputs[0].numpy()[0, -1], dtype=np.float32)  # copies the device logits to the host

    def _grow(self, capacity: int, old: dict[str, np.ndarray]) -> None:
        """(Re)allocate every shared KV buffer at ``capacity`` positions, keeping the ``seen`` ones."""
        self._kv, self._kv_capacity = {}, capacity
        for name, present in zip(self.past_names, self.present_names):
            prev = old[name]  # (1, kv_heads, old capacity, head_dim)
            buf = np.zeros((*prev.shape[:2], capacity, prev.shape[3]), dtype=prev.dtype)
            buf[:, :, :self.seen] = prev[:, :, :self.seen]
            value = self._ort.OrtValue.ortvalue_from_numpy(buf)  # wraps the numpy memory: no copy
            self.binding.bind_ortvalue_input(name, value)
            self.binding.bind_ortvalue_output(present, value)
            self._kv[name] = buf  # owns the memory the bound value wraps


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
        self._session = ort.InferenceSession(str(self.model_path), sess_options=self._session_options(ort, n_threads),
                                             providers=self.providers)
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
        self._logits_shape = self._logits_info(config)
        # the fused export's GroupQueryAttention reads and writes one KV buffer in place (see _BoundDecoder)
        genai = _read_json(self.model_dir / GENAI_CONFIG)
        self.shares_kv_buffer = bool(genai.get("search", {}).get("past_present_share_buffer")) and bool(self._past)

    @staticmethod
    def _session_options(ort, n_threads: int | None):
        """Full graph optimisation; intra-op threads: ``n_threads``, else onnxruntime's default (physical cores)."""
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if n_threads:
            opts.intra_op_num_threads = n_threads
        return opts

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

    def _logits_info(self, config: dict) -> tuple[int, type]:
        """(vocabulary size, numpy dtype) of the ``logits`` output: the graph's shape, else config.json."""
        out = next(o for o in self._session.get_outputs() if o.name == "logits")
        vocab = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) else config.get("vocab_size")
        dtype = _NP_DTYPES.get(out.type)
        if not isinstance(vocab, int) or dtype is None:
            raise ModelFormatError(f"{self.model_path}: cannot tell the logits' vocabulary size or type ({out.type}, {out.shape})")
        return vocab, dtype

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
        """KV-cache decoding with IOBinding: the prompt in one pass, then one token a step.

        ``present.*`` outputs stay OrtValues on the session's device and are bound back as
        ``past_key_values.*`` (no numpy round trip of the growing cache); ``attention_mask`` and
        ``position_ids`` are views of buffers filled once; a step's logits (1, 1, V) land in a bound,
        preallocated buffer. Only the last position's logits are read (V floats a step).
        """
        steps = _BoundDecoder(self)
        token = yield steps.run(np.asarray(prompt_ids, dtype=np.int64)[None, :])  # (1, T) the prompt
        while True:
            token = yield steps.run(np.array([[token]], dtype=np.int64))  # (1, 1)

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
