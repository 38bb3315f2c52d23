"""NICE reward backends ``rule`` and ``http``, the reward cache and the predecessor aliases
(dataflex_select.rewards; algorithms spec §2.7 "Reward backends").

The HTTP tests talk to a real ``ThreadingHTTPServer`` on 127.0.0.1. The backends are registered
through a plugin object on a bare plugin manager, so the tests do not depend on the entry
points of the installed distributions.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dataflex_core import (
    ComponentNotFound,
    ConfigError,
    DataError,
    DataflexPluginManager,
    PluginError,
    Registry,
    hookimpl,
)
from dataflex_select.rewards import (
    CachedReward,
    HttpReward,
    RewardCache,
    RewardError,
    RuleReward,
    exact_match,
    extract_code,
    make_reward_backend,
    python_unit_tests,
    redact_url,
    reward_backend_specs,
    reward_config_from_nice_params,
)

SECRET = "s3cret-TOKEN-value-42"
FNS = "dataflex_test_reward_fns"


# --------------------------------------------------------------------------- fixtures


class _RewardPlugin:
    @hookimpl
    def dataflex_register_reward_backends(self) -> list[Any]:
        return reward_backend_specs()


@pytest.fixture
def registry() -> Registry:
    pm = DataflexPluginManager()  # bare: no entry points, only the backends under test
    pm.register_plugin(_RewardPlugin(), name="test_reward_backends")
    return Registry(pm)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fns(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """An importable module of rule functions, ``dataflex_test_reward_fns:<name>``."""
    mod = types.ModuleType(FNS)
    calls: list[Any] = []

    def length(prompt: str, response: str, reference: str | None, meta: dict) -> float:
        calls.append((prompt, response, reference, meta))
        return len(response) + meta.get("bonus", 0)

    def flaky(prompt: str, response: str, reference: str | None, meta: dict) -> Any:
        if response == "boom":
            raise ValueError("cannot score boom")
        if response == "none":
            return None
        return 1

    def batched(prompts, responses, references, metas):
        calls.append(len(prompts))
        return [float(len(r)) for r in responses]

    batched.batched = True

    def short(prompts, responses, references, metas):
        return [1.0]

    short.batched = True

    def scaled(prompt, response, reference, meta, *, factor: float = 1.0) -> float:
        return factor * len(response)

    mod.length, mod.flaky, mod.batched, mod.short, mod.scaled = (
        length,
        flaky,
        batched,
        short,
        scaled,
    )
    mod.not_callable = 3
    mod.calls = calls
    monkeypatch.setitem(sys.modules, FNS, mod)
    return mod


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, code: int, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        size = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(size))
        srv = self.server
        with srv.lock:
            srv.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            seen = srv.counts.get((self.path, json.dumps(body)), 0)
            srv.counts[(self.path, json.dumps(body))] = seen + 1
        response = body.get("response", "") if isinstance(body, dict) else ""
        if self.path == "/score":
            self._send(200, {"score": float(len(response))})
        elif self.path == "/nested":
            self._send(200, {"choices": [{"score": f"{len(response) / 4}"}]})
        elif self.path == "/label":
            self._send(200, {"verdict": {"label": response}})
        elif self.path == "/flaky":
            if seen == 0:
                self._send(500, {"error": "try again"})
            else:
                self._send(200, {"score": 7})
        elif self.path == "/slow":
            time.sleep(srv.slow_s)
            try:
                self._send(200, {"score": 1})
            except OSError:
                pass
        elif self.path == "/bad":
            self._send(400, {"error": "bad request"})
        elif self.path == "/echo":
            self._send(503, f"denied for {self.headers.get('Authorization')}".encode())
        elif self.path == "/notjson":
            self._send(200, b"hello")
        else:
            self._send(404, {"error": "no route"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.counts: dict[Any, int] = {}
        self.slow_s = 1.0

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that timed out leave broken pipes behind

    def paths(self) -> list[str]:
        with self.lock:
            return [r["path"] for r in self.requests]


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _url(srv: _Server, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def _http(srv: _Server, path: str, **cfg: Any) -> dict[str, Any]:
    return {"backend": "http", "url": _url(srv, path), "retry_backoff_s": 0.01, **cfg}


# --------------------------------------------------------------------------- rule


def test_exact_match_normalises_case_and_whitespace() -> None:
    assert exact_match("q", "  The   Answer\n", "the answer") == 1.0
    assert exact_match("q", "the answer.", "the answer") == 0.0
    with pytest.raises(DataError, match="reference"):
        exact_match("q", "x", None)


def test_rule_backend_exact_match(registry: Registry) -> None:
    fn = "dataflex_select.rewards:exact_match"
    backend = make_reward_backend({"backend": "rule", "function": fn}, registry=registry)
    assert isinstance(backend, CachedReward)
    assert backend.spec()["function"] == fn
    assert backend.score(["a", "b"], ["Paris", "rome "], ["paris", "Madrid"]) == [1.0, 0.0]
    with pytest.raises(RewardError, match=r"sample 0 failed.*reference"):
        backend.score(["a"], ["x"], [None])
    zero = make_reward_backend(
        {"backend": "rule", "function": fn, "on_error": "zero"}, registry=registry
    )
    assert zero.score(["a", "b"], ["x", "y"], [None, "y"]) == [0.0, 1.0]
    skip = make_reward_backend(
        {"backend": "rule", "function": fn, "on_error": "skip_sample"}, registry=registry
    )
    got = skip.score(["a", "b"], ["x", "y"], [None, "y"])
    assert math.isnan(got[0]) and got[1] == 1.0


def test_rule_backend_calls_with_meta_and_kwargs(registry: Registry, fns: types.ModuleType) -> None:
    backend = make_reward_backend(
        {"backend": "rule", "function": f"{FNS}:length"}, registry=registry
    )
    assert backend.score(["p", "q"], ["abc", "de"], None, [{"bonus": 10}, None]) == [13.0, 2.0]
    assert fns.calls[0] == ("p", "abc", None, {"bonus": 10})
    scaled = make_reward_backend(
        {
            "backend": "rule",
            "function": f"{FNS}:scaled",
            "function_kwargs": {"factor": 0.5},
            "concurrency": 4,
        },
        registry=registry,
    )
    assert scaled.score(["p"] * 5, ["a", "bb", "ccc", "dddd", ""]) == [0.5, 1.0, 1.5, 2.0, 0.0]
    assert scaled.spec()["function_kwargs"] == {"factor": 0.5}


def test_rule_backend_batched_and_failures(registry: Registry, fns: types.ModuleType) -> None:
    batched = make_reward_backend(
        {"backend": "rule", "function": f"{FNS}:batched", "batch_size": 2}, registry=registry
    )
    assert batched.score(["p"] * 5, ["a", "bb", "ccc", "dddd", "e"]) == [1, 2, 3, 4, 1]
    assert fns.calls == [2, 2, 1]
    short = make_reward_backend({"backend": "rule", "function": f"{FNS}:short"}, registry=registry)
    with pytest.raises(RewardError, match="returned 1 values for 2 samples"):
        short.score(["p", "q"], ["a", "b"])
    flaky = make_reward_backend(
        {"backend": "rule", "function": f"{FNS}:flaky", "on_error": "zero"}, registry=registry
    )
    assert flaky.score(["p"] * 3, ["ok", "boom", "none"]) == [1.0, 0.0, 0.0]
    strict = make_reward_backend({"backend": "rule", "function": f"{FNS}:flaky"}, registry=registry)
    with pytest.raises(RewardError, match=r"sample 1 failed: ValueError: cannot score boom"):
        strict.score(["p"] * 2, ["ok", "boom"])
    with pytest.raises(RewardError, match="expected a number, got NoneType"):
        strict.score(["p"], ["none"])


def test_rule_backend_config_errors(registry: Registry, fns: types.ModuleType) -> None:
    with pytest.raises(PluginError, match="no attribute 'missing'"):
        make_reward_backend({"backend": "rule", "function": f"{FNS}:missing"}, registry=registry)
    with pytest.raises(ConfigError, match="not callable"):
        make_reward_backend(
            {"backend": "rule", "function": f"{FNS}:not_callable"}, registry=registry
        )
    with pytest.raises(ConfigError, match="package.module:callable"):
        make_reward_backend({"backend": "rule", "function": "exact_match"}, registry=registry)
    with pytest.raises(ConfigError, match=r"unknown key 'url' in reward 'rule'"):
        make_reward_backend(
            {"backend": "rule", "function": f"{FNS}:length", "url": "http://x"}, registry=registry
        )
    with pytest.raises(ConfigError, match="on_error"):
        make_reward_backend(
            {"backend": "rule", "function": f"{FNS}:length", "on_error": "ignore"},
            registry=registry,
        )


def test_python_unit_tests_pass_fail_and_fences() -> None:
    code = "```python\ndef add(a, b):\n    return a + b\n```\nThat is all."
    assert extract_code(code) == "def add(a, b):\n    return a + b\n"
    assert python_unit_tests("", code, "assert add(2, 3) == 5") == 1.0
    assert python_unit_tests("", "def add(a, b):\n    return a - b", "assert add(2, 3) == 5") == 0.0
    assert python_unit_tests("", "this is not python", "assert True") == 0.0
    tests = (
        "import unittest\n"
        "class T(unittest.TestCase):\n"
        "    def test_add(self):\n"
        "        self.assertEqual(add(1, 1), 2)\n"
    )
    assert python_unit_tests("", code, tests) == 1.0
    assert python_unit_tests("", "def add(a, b):\n    return 0", tests) == 0.0
    with pytest.raises(DataError, match="test code"):
        python_unit_tests("", code, None)


def test_python_unit_tests_runs_isolated_in_a_temp_dir(tmp_path: Path) -> None:
    probe = (
        "import os, socket, sys\n"
        f"assert os.getcwd() != {str(Path.cwd())!r}\n"
        "assert sys.flags.isolated == 1\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "except OSError as exc:\n"
        "    assert 'disabled' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit(3)\n"
    )
    assert python_unit_tests("", "x = 1", probe) == 1.0


def test_python_unit_tests_timeout(registry: Registry) -> None:
    backend = make_reward_backend(
        {
            "backend": "rule",
            "function": "dataflex_select.rewards:python_unit_tests",
            "function_kwargs": {"timeout_s": 0.5},
            "concurrency": 2,
        },
        registry=registry,
    )
    start = time.monotonic()
    got = backend.score(
        ["", ""],
        ["while True:\n    pass", "def f():\n    return 1"],
        ["assert True", "assert f() == 1"],
    )
    assert got == [0.0, 1.0]
    assert time.monotonic() - start < 5


# --------------------------------------------------------------------------- http


def test_http_success_and_json_safe_rendering(registry: Registry, server: _Server) -> None:
    template = {
        "model": "judge",
        "response": "{response}",
        "messages": [{"role": "user", "content": "Q: {prompt}\nA: {response} {not_a_field}"}],
        "reference": "{reference}",
        "n": 1,
    }
    backend = make_reward_backend(
        _http(server, "/score", request_template=template), registry=registry
    )
    prompt = 'say "hi"\n{prompt} \\ done'
    got = backend.score([prompt, "p2"], ["abc", "hello"], [None, "ref"])
    assert got == [3.0, 5.0]
    bodies = sorted((r["body"] for r in server.requests), key=lambda b: b["reference"] or "")
    assert bodies[0]["reference"] is None  # a whole-string placeholder keeps null
    assert bodies[0]["messages"][0]["content"] == f"Q: {prompt}\nA: abc {{not_a_field}}"
    assert bodies[1]["reference"] == "ref" and bodies[1]["n"] == 1
    assert server.requests[0]["headers"]["Content-Type"] == "application/json"


def test_http_default_template_and_nested_path(registry: Registry, server: _Server) -> None:
    backend = make_reward_backend(
        _http(server, "/nested", response_path="choices.0.score"), registry=registry
    )
    assert backend.score(["p"], ["abcd"], ["r"]) == [1.0]
    assert server.requests[0]["body"] == {"prompt": "p", "response": "abcd", "reference": "r"}
    missing = make_reward_backend(
        _http(server, "/nested", response_path="choices.3.score"), registry=registry
    )
    with pytest.raises(RewardError, match=r"no 'choices.3.score'.*no item '3'"):
        missing.score(["p"], ["abcd"])
    notjson = make_reward_backend(_http(server, "/notjson"), registry=registry)
    with pytest.raises(RewardError, match="not JSON"):
        notjson.score(["p"], ["x"])


def test_http_label_map(registry: Registry, server: _Server) -> None:
    cfg = _http(
        server,
        "/label",
        response_path={"win": 1, "tie": 0.5, "loss": 0},
        response_label_path="verdict.label",
    )
    backend = make_reward_backend(cfg, registry=registry)
    assert backend.score(["p"] * 3, ["win", " TIE ", "Loss"]) == [1.0, 0.5, 0.0]
    assert backend.spec()["response_label_path"] == "verdict.label"
    with pytest.raises(RewardError, match=r"unknown label 'maybe'.*known labels: loss, tie, win"):
        backend.score(["p"], ["maybe"])
    with pytest.raises(ConfigError, match="collide"):
        make_reward_backend(
            _http(server, "/label", response_path={"Win": 1, "win ": 0}), registry=registry
        )


def test_http_retries_5xx_then_succeeds(registry: Registry, server: _Server) -> None:
    backend = make_reward_backend(_http(server, "/flaky", max_retries=2), registry=registry)
    assert backend.score(["p", "q"], ["a", "b"]) == [7.0, 7.0]
    assert server.paths() == ["/flaky"] * 4  # one 500 and one success per sample


def test_http_4xx_is_not_retried(registry: Registry, server: _Server) -> None:
    backend = make_reward_backend(_http(server, "/bad", max_retries=3), registry=registry)
    url = _url(server, "/bad")
    with pytest.raises(RewardError, match=rf"POST {url} failed: HTTP 400.*not retried"):
        backend.score(["p"], ["a"])
    assert server.paths() == ["/bad"]


@pytest.mark.parametrize("policy", ["raise", "zero", "skip_sample"])
def test_http_timeout_retries_then_on_error(
    registry: Registry, server: _Server, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    server.slow_s = 1.0
    cfg = _http(server, "/slow", timeout_s=0.2, max_retries=1, on_error=policy)
    backend = make_reward_backend(cfg, registry=registry)
    start = time.monotonic()
    if policy == "raise":
        with pytest.raises(RewardError) as info:
            backend.score(["p"], ["a"])
        msg = str(info.value)
        assert _url(server, "/slow") in msg
        assert "after 2 attempt(s)" in msg and "timed out after 0.2 s" in msg
    else:
        with caplog.at_level(logging.WARNING, logger="dataflex_select.rewards"):
            got = backend.score(["p"], ["a"])
        assert (got == [0.0]) if policy == "zero" else math.isnan(got[0])
        assert "1 of 1 sample(s) failed" in caplog.text
        assert len(backend.cache) == 0  # failures are never cached
    assert time.monotonic() - start < 3
    assert server.paths() == ["/slow", "/slow"]


def test_http_connection_refused_is_retried(registry: Registry) -> None:
    srv = _Server()  # bound, then closed: nothing listens on the port any more
    url = f"http://127.0.0.1:{srv.server_address[1]}/score"
    srv.server_close()
    backend = make_reward_backend(
        {"backend": "http", "url": url, "max_retries": 2, "retry_backoff_s": 0.01},
        registry=registry,
    )
    with pytest.raises(RewardError, match=r"after 3 attempt\(s\).*(Refused|refused)"):
        backend.score(["p"], ["a"])


def test_http_headers_from_env_never_leak(
    registry: Registry,
    server: _Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = {"Authorization": "Bearer ${DF_TEST_REWARD_KEY}", "X-Api-Key": "DF_TEST_REWARD_KEY"}
    cache_dir = tmp_path / "cache"
    ok = make_reward_backend(
        _http(server, "/score", headers_env=headers, cache_dir=str(cache_dir)), registry=registry
    )
    # a missing variable is named, and nothing is sent
    with pytest.raises(ConfigError, match="DF_TEST_REWARD_KEY.*not set"):
        ok.score(["p"], ["abc"])
    assert server.requests == []
    monkeypatch.setenv("DF_TEST_REWARD_KEY", SECRET)
    assert ok.score(["p"], ["abc"]) == [3.0]
    seen = server.requests[0]["headers"]
    assert seen["Authorization"] == f"Bearer {SECRET}" and seen["X-Api-Key"] == SECRET
    # the server echoes the header into its error: the message must not carry it
    echo = make_reward_backend(
        _http(server, "/echo", headers_env=headers, max_retries=1, cache_dir=str(cache_dir)),
        registry=registry,
    )
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(RewardError) as info:
            echo.score(["p"], ["abc"])
        zero = make_reward_backend(
            _http(server, "/echo", headers_env=headers, max_retries=0, on_error="zero"),
            registry=registry,
        )
        assert zero.score(["p"], ["abc"]) == [0.0]
    assert "HTTP 503" in str(info.value) and "<redacted>" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in caplog.text
    for backend in (ok, echo):
        assert SECRET not in json.dumps(backend.spec())
        assert backend.spec()["headers"] == ["Authorization", "X-Api-Key"]
    files = list(cache_dir.iterdir())
    assert files and all(SECRET not in f.read_text() for f in files)


def test_http_literal_header_and_bad_config_refused(registry: Registry, server: _Server) -> None:
    with pytest.raises(ConfigError, match="literal header values are refused"):
        make_reward_backend(
            _http(server, "/score", headers_env={"Authorization": "Bearer abc.def"}),
            registry=registry,
        )
    with pytest.raises(ConfigError, match="http:// or https://"):
        make_reward_backend({"backend": "http", "url": "ftp://host/x"}, registry=registry)
    with pytest.raises(ConfigError, match="not valid JSON"):
        make_reward_backend(_http(server, "/score", request_template="{oops"), registry=registry)
    with pytest.raises(ConfigError, match="timeout_s"):
        make_reward_backend(_http(server, "/score", timeout_s=0), registry=registry)


def test_http_cache_avoids_second_request(
    registry: Registry, server: _Server, tmp_path: Path
) -> None:
    cfg = _http(server, "/score", cache_dir=str(tmp_path))
    backend = make_reward_backend(cfg, registry=registry)
    assert backend.score(["p", "p", "q"], ["ab", "ab", "abc"]) == [2.0, 2.0, 3.0]
    assert len(server.requests) == 2  # the duplicate was sent once
    assert backend.score(["q", "p"], ["abc", "ab"]) == [3.0, 2.0]
    assert len(server.requests) == 2 and backend.hits == 2 and backend.misses == 2
    # a new backend with the same spec reads the JSONL cache
    again = make_reward_backend(cfg, registry=registry)
    assert again.score(["p"], ["ab"]) == [2.0]
    assert len(server.requests) == 2
    # another spec (template) is another cache namespace
    other = make_reward_backend(
        {**cfg, "request_template": {"response": "{response}", "v": 2}}, registry=registry
    )
    assert other.score(["p"], ["ab"]) == [2.0]
    assert len(server.requests) == 3
    # the reference is part of the key
    assert backend.score(["p"], ["ab"], ["ref"]) == [2.0]
    assert len(server.requests) == 4
    # timeouts and retries do not change the spec
    tuned = make_reward_backend({**cfg, "timeout_s": 5.0, "max_retries": 0}, registry=registry)
    assert tuned.spec() == backend.spec()
    uncached = make_reward_backend({**cfg, "cache": False}, registry=registry)
    assert isinstance(uncached, HttpReward)
    uncached.score(["p"], ["ab"])
    assert len(server.requests) == 5


# --------------------------------------------------------------------------- cache, building


def test_reward_cache_persists_finite_values_only(tmp_path: Path) -> None:
    spec = {"backend": "x", "v": 1}
    cache = RewardCache(spec, tmp_path)
    k1, k2 = cache.key("p", "r", None), cache.key("p", "r", "ref")
    assert k1 != k2 and k1 == RewardCache(spec).key("p", "r", None)
    assert k1 != RewardCache({"backend": "x", "v": 2}).key("p", "r", None)
    cache.put_many({k1: 0.5, k2: math.nan})
    assert cache.get(k1) == 0.5 and cache.get(k2) is None
    reloaded = RewardCache(spec, tmp_path)
    assert reloaded.get(k1) == 0.5 and len(reloaded) == 1
    assert cache.path is not None and cache.path.name.startswith("reward_cache-")
    spec_file = cache.path.with_name(cache.path.name.replace(".jsonl", ".spec.json"))
    assert json.loads(spec_file.read_text()) == spec
    with pytest.raises(PluginError, match="JSON-safe"):
        RewardCache({"backend": object()})


def test_make_reward_backend_errors(registry: Registry) -> None:
    with pytest.raises(ConfigError, match=r"reward.backend is required: one of http, rule"):
        make_reward_backend({"function": "x:y"}, registry=registry)
    with pytest.raises(ComponentNotFound, match="no reward named 'rules'; did you mean 'rule'"):
        make_reward_backend({"backend": "rules"}, registry=registry)
    with pytest.raises(ConfigError, match="cache must be true or false"):
        make_reward_backend({"backend": "rule", "cache": "yes"}, registry=registry)


def test_third_party_backend_through_the_hook() -> None:
    class Constant:
        def __init__(self, config: Any, context: Any) -> None:
            self.calls = 0

        def score(self, prompts, responses, references=None, metas=None):
            self.calls += 1
            return [0.25 if r else math.nan for r in responses]

        def spec(self) -> dict[str, Any]:
            return {"backend": "constant"}

    class Plugin:
        @hookimpl
        def dataflex_register_reward_backends(self) -> list[Any]:
            from dataflex_core import ComponentSpec

            return [ComponentSpec(kind="reward", name="constant", factory=Constant)]

    pm = DataflexPluginManager()
    pm.register_plugin(Plugin(), name="third_party")
    backend = make_reward_backend({"backend": "constant"}, registry=Registry(pm))
    got = backend.score(["p", "p"], ["x", ""])
    assert got[0] == 0.25 and math.isnan(got[1])
    backend.score(["p", "p"], ["x", ""])
    assert backend.backend.calls == 2 and backend.hits == 1  # NaN was not cached


def test_specs_and_no_heavy_imports() -> None:
    specs = {s.name: s for s in reward_backend_specs()}
    assert set(specs) == {"rule", "http"}
    assert specs["rule"].factory == "dataflex_select.rewards:RuleReward"
    assert specs["http"].factory == "dataflex_select.rewards:HttpReward"
    assert all(s.kind == "reward" for s in specs.values())
    code = (
        "import sys, dataflex_select.rewards\n"
        "bad = [m for m in ('torch', 'numpy', 'urllib.request') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_redact_url() -> None:
    assert redact_url("https://user:pw@api.example.com:8443/v1/score?key=abc") == (
        "https://api.example.com:8443/v1/score?<query redacted>"
    )
    assert redact_url("http://127.0.0.1:80/x") == "http://127.0.0.1:80/x"


def test_rule_backend_without_registry_plugin() -> None:
    backend = RuleReward({"function": "dataflex_select.rewards:exact_match"})
    assert backend.score(["q"], ["A"], ["a"]) == [1.0]


# --------------------------------------------------------------------------- predecessor keys


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_alias_reward_model_path(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg, rest = reward_config_from_nice_params(
            {"reward_model_path": "/models/rm", "mc_samples": 4}
        )
    assert cfg == {"model_name_or_path": "/models/rm", "backend": "local_model"}
    assert rest == {"mc_samples": 4}
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "reward_model_path" in msgs[0] and "deprecated" in msgs[0]


def test_alias_backends(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg, rest = reward_config_from_nice_params(
            {"reward_model_backend": "local_vllm", "reward_model_path": "/rm", "topk": 3}
        )
    assert cfg == {"backend": "local_model", "engine": "vllm", "model_name_or_path": "/rm"}
    assert rest == {"topk": 3}
    assert len(_warnings(caplog)) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cfg, _ = reward_config_from_nice_params(
            {
                "reward_model_backend": "api",
                "reward_backend_params": {"url": "http://judge/score", "timeout_s": 5},
            }
        )
    assert cfg == {"backend": "http", "url": "http://judge/score", "timeout_s": 5}
    msgs = _warnings(caplog)
    assert len(msgs) == 2 and "reward_backend_params" in msgs[1]
    with pytest.raises(ConfigError, match="reward_model_backend must be one of local_vllm, api"):
        reward_config_from_nice_params({"reward_model_backend": "openai"})


def test_alias_predecessor_nested_params(caplog: pytest.LogCaptureFixture) -> None:
    params = {
        "reward_model_backend": "api",
        "reward_backend_params": {
            "local_vllm": {"hf_model_name_or_path": "meta-llama/x", "vllm_tensor_parallel_size": 1},
            "api": {
                "api_url": "https://judge.example/v1/score",
                "api_key": "DF_API_KEY",
                "model_name": "gpt-4o",
                "temperature": 0.0,
            },
        },
    }
    with caplog.at_level(logging.WARNING):
        cfg, rest = reward_config_from_nice_params(params)
    assert rest == {}
    assert cfg == {
        "backend": "http",
        "url": "https://judge.example/v1/score",
        "headers_env": {"Authorization": "Bearer ${DF_API_KEY}"},
    }
    msgs = _warnings(caplog)
    assert len(msgs) == 2 and "Dropped model_name, temperature" in msgs[1]
    caplog.clear()
    # without reward_model_backend the predecessor default (local_vllm) is chosen
    with caplog.at_level(logging.WARNING):
        cfg, _ = reward_config_from_nice_params(
            {"reward_backend_params": params["reward_backend_params"]}
        )
    assert cfg == {"backend": "local_model", "engine": "vllm", "model_name_or_path": "meta-llama/x"}
    assert len(_warnings(caplog)) == 1


def test_alias_conflicts_and_literal_keys() -> None:
    with pytest.raises(ConfigError, match="reward_model_path sets reward.model_name_or_path"):
        reward_config_from_nice_params(
            {"reward_model_path": "/a", "reward": {"model_name_or_path": "/b"}}
        )
    with pytest.raises(ConfigError, match="reward_model_backend sets reward.backend"):
        reward_config_from_nice_params(
            {"reward_model_backend": "api", "reward": {"backend": "rule"}}
        )
    with pytest.raises(ConfigError, match="literal key") as info:
        reward_config_from_nice_params(
            {"reward_model_backend": "api", "reward_backend_params": {"api_key": "sk-abc123.xyz"}}
        )
    assert "sk-abc123" not in str(info.value)
    # the current form passes through untouched, without warnings
    cfg, rest = reward_config_from_nice_params({"reward": {"backend": "rule", "function": "a:b"}})
    assert cfg == {"backend": "rule", "function": "a:b"} and rest == {}


def test_alias_config_builds_a_backend(registry: Registry, server: _Server) -> None:
    cfg, _ = reward_config_from_nice_params(
        {
            "reward_model_backend": "api",
            "reward_backend_params": {"api_url": _url(server, "/score")},
        }
    )
    backend = make_reward_backend({**cfg, "retry_backoff_s": 0.01}, registry=registry)
    assert backend.score(["p"], ["abcd"]) == [4.0]
