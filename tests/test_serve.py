"""`edge-downscale serve` through the official openai client, over loopback, on a tiny exported bundle.

The server is real (uvicorn in a thread, or the CLI in a subprocess) and so is the runtime; faults
(a slow member, a member that crashes) are injected into one member's decode loop.
"""
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from edge_downscale.runtime import Ensemble  # noqa: E402
from edge_downscale.serve import ServeConfig, create_app  # noqa: E402

KEY = "test-key-0123456789"
CODE = "def load(path):\n    with open(path) as f:\n        return json.load(f)\n"
LEGAL = "THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING"
pytestmark = pytest.mark.timeout(120)


def _chunks(text: str, size: int = 1200) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size) if text[i:i + size].strip()]


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory) -> Path:
    """Two members (code: f32, legal: q8_0 of the tiny model) behind a router trained on real text."""
    from edge_downscale.bundle import BundleConfig, build_bundle
    from edge_downscale.export import ExportConfig, export_model

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [c for n in ("json/decoder.py", "json/encoder.py", "textwrap.py", "shlex.py") for c in _chunks((stdlib / n).read_text())]
    lic = Path("/usr/share/common-licenses")
    legal = [c for n in ("Apache-2.0", "GPL-3", "LGPL-2.1", "MPL-2.0") if (lic / n).exists() for c in _chunks((lic / n).read_text())]
    if len(legal) < 10:
        pytest.skip("no licence texts under /usr/share/common-licenses")
    out = tmp_path_factory.mktemp("serve")
    export_model(str(tiny_model_dir), ExportConfig(out_dir=out / "x", format="gguf", quants="f32,q8_0"), log=lambda m: None)
    opts = {"n_ctx": 256, "n_threads": 1}
    members = [{"name": "coder", "path": out / "x/gguf-f32", "domain": "code", "options": opts},
               {"name": "lawyer", "path": out / "x/gguf-q8_0", "domain": "legal", "options": opts}]
    return build_bundle(BundleConfig(out=out / "tiny-bundle", members=members, strategy="route"),
                        router_texts={"code": code[:60], "legal": legal[:60]}, log=lambda m: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(bundle):
    """(base URL, engine): the app on a free loopback port; one request may wait per member."""
    app = create_app(bundle, ServeConfig(port=_free_port(), api_key=KEY, queue_size=1, max_tokens_limit=200,
                                          default_max_tokens=16))
    engine = app.state.engine
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=engine.config.port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{engine.config.port}", engine
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=30)


def _wait(cond, seconds=10.0):
    deadline = time.time() + seconds
    while not cond():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.02)


def _metric(base: str, name: str, **labels) -> float:
    """A sample of the server's /metrics (0 if absent), through prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def _slow(monkeypatch, engine, member: str, delay: float, steps: list) -> None:
    """Fault injection: the member's decode sleeps ``delay`` per token and never ends a turn by itself."""
    with engine.ens.use(member) as backend:
        original = type(backend)._decode.__get__(backend)
        ends = list(backend.end_ids)

        def decode(prompt_ids):
            inner = original(prompt_ids)
            try:
                logits = next(inner)
                while True:
                    steps.append(1)
                    time.sleep(delay)
                    logits = logits.copy()
                    logits[ends] = -1e9
                    logits = inner.send((yield logits))
            finally:
                inner.close()

        monkeypatch.setattr(backend, "_decode", decode)


def test_chat_and_completion_streamed_and_not_match_the_runtime(server, client):
    base, engine = server
    name = engine.name
    chat = client.chat.completions.create(model=name, messages=[{"role": "user", "content": CODE}], max_tokens=12,
                                          temperature=0)
    direct = engine.ens.generate([{"role": "user", "content": CODE}], max_tokens=12)
    assert chat.object == "chat.completion" and chat.choices[0].message.content == direct.text
    assert chat.choices[0].finish_reason in ("stop", "length")
    u = chat.usage
    assert u.prompt_tokens == direct.usage.prompt_tokens and u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.energy["joules"] > 0 and u.energy["source"] in ("estimated", "rapl", "nvml")
    assert u.energy["grams_co2"] == pytest.approx(u.energy["joules"] / 3.6e6 * 400)
    ens = chat.model_extra["ensemble"]
    assert ens["members"] == ["coder"] and ens["strategy"] == "route" and "router: code" in ens["reason"]
    assert ens["route"]["label"] == "code" and ens["fallbacks"] == []

    chunks = list(client.chat.completions.create(model=name, messages=[{"role": "user", "content": CODE}],
                                                 max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == direct.text
    last = chunks[-1]
    assert last.choices[0].finish_reason == chat.choices[0].finish_reason
    assert last.usage.completion_tokens == u.completion_tokens and last.usage.energy["joules"] > 0
    assert last.model_extra["ensemble"]["members"] == ["coder"]

    comp = client.completions.create(model=name, prompt=LEGAL, max_tokens=10, temperature=0, logprobs=0)
    ref = engine.ens.generate(LEGAL, max_tokens=10)
    assert comp.choices[0].text == ref.text and comp.model_extra["ensemble"]["members"] == ["lawyer"]
    assert comp.choices[0].logprobs.token_logprobs == pytest.approx(ref.token_logprobs)
    assert len(comp.choices[0].logprobs.tokens) == comp.usage.completion_tokens
    streamed = list(client.completions.create(model=name, prompt=LEGAL, max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == ref.text
    assert streamed[-1].usage.energy["source"] and streamed[-1].model_extra["ensemble"]["members"] == ["lawyer"]

    # sampling: the same seed gives the same text
    a, b = (client.completions.create(model=name, prompt=CODE, max_tokens=8, temperature=0.9, top_p=0.9, seed=7)
            for _ in range(2))
    assert a.choices[0].text == b.choices[0].text
    assert _metric(base, "edge_downscale_serve_tokens_total", member="coder", kind="completion") >= u.completion_tokens
    assert _metric(base, "edge_downscale_serve_joules_total", member="lawyer") > 0


def test_a_member_by_name_answers_and_a_path_is_not_a_name(server, client):
    base, engine = server
    chat = client.chat.completions.create(model="lawyer", messages=[{"role": "user", "content": CODE}], max_tokens=6,
                                          temperature=0, logprobs=True)
    ens = chat.model_extra["ensemble"]
    assert ens["members"] == ["lawyer"] and "requested by name" in ens["reason"]
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
    assert all(t.logprob <= 0 for t in chat.choices[0].logprobs.content)
    for bad in ("members/coder", str(engine.ens.members["coder"].dir), "../tiny-bundle"):
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model=bad, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert e.value.body["code"] == "model_not_found"
    models = {m.id: m.model_extra for m in client.models.list()}
    assert set(models) == {engine.name, "coder", "lawyer"}
    assert models["coder"]["domain"] == "code" and models["coder"]["format"] == "gguf"
    assert models["lawyer"]["quantization"] == "q8_0" and models["lawyer"]["size_bytes"] > 0
    assert models[engine.name]["strategy"] == "route"
    health = httpx.get(base + "/health").json()  # no key needed
    assert health["status"] == "ok" and set(health["loaded"]) <= {"coder", "lawyer"}


def test_bad_requests_are_400_in_the_openai_error_format(server, client):
    base, engine = server
    msgs = [{"role": "user", "content": "hi"}]
    for kw, param in (({"temperature": 5}, "temperature"), ({"max_tokens": 10_000}, "max_tokens"),
                      ({"n": 2}, "n"), ({"top_p": 0}, "top_p"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=engine.name, messages=msgs, **kw)
        assert e.value.status_code == 400 and e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=engine.name, messages=[{"role": "wizard", "content": "x"}])
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(base + "/v1/completions", headers=h, content=b"{not json")
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(base + "/v1/completions", headers=h, json={"model": engine.name, "prompt": "x" * 2_000_000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.post(base + "/v1/completions", headers=h, json={"model": engine.name, "prompt": "x" * 40_000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
    assert _metric(base, "edge_downscale_serve_requests_total", endpoint="completion", model=engine.name, status="400") >= 1


def test_a_wrong_or_missing_key_is_401(server):
    base, engine = server
    wrong = openai.OpenAI(base_url=base + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model=engine.name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(base + "/metrics").status_code == 401


def test_a_full_queue_is_429_with_retry_after(server, client, monkeypatch):
    base, engine = server
    steps: list = []
    _slow(monkeypatch, engine, "coder", 0.05, steps)
    msgs = [{"role": "user", "content": CODE}]
    first = client.chat.completions.create(model="coder", messages=msgs, max_tokens=60, temperature=0, stream=True)
    next(iter(first))  # answering
    waiting = []
    t = threading.Thread(target=lambda: waiting.append(client.chat.completions.create(
        model=engine.name, messages=msgs, max_tokens=3, temperature=0)))  # routed to coder: queued behind it
    t.start()
    _wait(lambda: engine.in_flight["coder"] == 2)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="coder", messages=msgs, max_tokens=3)
    assert e.value.status_code == 429 and int(e.value.response.headers["Retry-After"]) >= 1
    assert e.value.body["code"] == "queue_full"
    other = client.chat.completions.create(model="lawyer", messages=msgs, max_tokens=3)  # another member's queue
    assert other.model_extra["ensemble"]["members"] == ["lawyer"]
    first.close()
    t.join(30)
    assert waiting and waiting[0].model_extra["ensemble"]["members"] == ["coder"]
    assert _metric(base, "edge_downscale_serve_rejected_total", member="coder") >= 1
    _wait(lambda: engine.in_flight["coder"] == 0)


def test_a_client_that_disconnects_stops_its_generation(server, client, monkeypatch):
    base, engine = server
    steps: list = []
    _slow(monkeypatch, engine, "coder", 0.03, steps)
    before = _metric(base, "edge_downscale_serve_cancelled_total", endpoint="chat")
    stream = client.chat.completions.create(model="coder", messages=[{"role": "user", "content": CODE}],
                                            max_tokens=150, temperature=0, stream=True)
    it = iter(stream)
    for _ in range(3):
        next(it)
    stream.close()  # the client goes away mid-answer
    _wait(lambda: engine.in_flight["coder"] == 0)
    stopped_at = len(steps)
    time.sleep(0.3)
    assert len(steps) == stopped_at < 40  # stopped well short of 150 tokens, and stays stopped
    assert _metric(base, "edge_downscale_serve_cancelled_total", endpoint="chat") == before + 1
    monkeypatch.undo()
    again = client.chat.completions.create(model="coder", messages=[{"role": "user", "content": CODE}], max_tokens=4)
    assert again.choices[0].message.content is not None  # the member's lock was released


def test_a_member_that_crashes_falls_back_and_says_so(server, client, monkeypatch):
    base, engine = server

    with engine.ens.use("coder") as coder:
        def crashing(prompt_ids):
            logits = np.zeros(coder._llm.n_vocab(), dtype=np.float32)
            logits[coder.tokenize("def")[0]] = 10.0  # one ordinary token, then the fault
            yield logits
            raise RuntimeError("simulated device loss")

        monkeypatch.setattr(coder, "_decode", crashing)
    msgs = [{"role": "user", "content": CODE}]
    resp = client.chat.completions.create(model=engine.name, messages=msgs, max_tokens=6, temperature=0)
    ens = resp.model_extra["ensemble"]
    assert ens["members"] == ["lawyer"] and "simulated device loss" in ens["fallbacks"][0]["error"]
    assert ens["fallbacks"][0]["member"] == "coder" and "after 1 failed member" in ens["reason"]
    chunks = list(client.chat.completions.create(model=engine.name, messages=msgs, max_tokens=6, temperature=0,
                                                 stream=True))
    assert any(c.model_extra.get("restart") for c in chunks)  # the partial answer is to be discarded
    assert chunks[-1].model_extra["ensemble"]["members"] == ["lawyer"]
    with pytest.raises(openai.APIStatusError) as e:  # by name there is no fallback: a clear 502
        client.chat.completions.create(model="coder", messages=msgs, max_tokens=6)
    assert e.value.status_code == 502 and "simulated device loss" in e.value.message
    assert _metric(base, "edge_downscale_serve_fallbacks_total", member="coder") >= 2


def test_the_cli_serves_a_bundle_torch_free(bundle):
    port = _free_port()
    code = ("import runpy, sys\nsys.argv = ['edge-downscale', 'serve', sys.argv[1], '--port', sys.argv[2]]\n"
            "import edge_downscale.cli as c\ntry:\n    c.main()\nfinally:\n"
            "    print('heavy', [m for m in ('torch', 'transformers') if m in sys.modules], flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(bundle), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: proc.poll() is None and _up(port), 30)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        r = c.completions.create(model="tiny-bundle", prompt=CODE, max_tokens=4, temperature=0)
        assert r.model_extra["ensemble"]["members"] == ["coder"]
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down, then re-raises it: KeyboardInterrupt
        out, err = proc.communicate(timeout=20)
    assert "serving 'tiny-bundle'" in err and "heavy []" in out
    res = subprocess.run([sys.executable, "-m", "edge_downscale.cli", "serve", str(bundle), "--host", "0.0.0.0"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unauthenticated" in res.stderr and "Traceback" not in res.stderr


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
