"""NICE reward backends (algorithms spec §2.7, "Reward backends"): ``rule`` and ``http``, the
reward cache, and the ``reward:`` config helpers.

A reward backend is any object with

* ``score(prompts, responses, references, metas=None) -> list[float]``: one reward per sample,
  batched;
* ``spec() -> dict``: a JSON-safe identity of what it computes (never a secret). The cache key of
  a sample is ``sha256(spec, prompt, response, reference)``, so two backends with equal specs
  must give equal rewards.

Backends are registered through the ``dataflex_register_reward_backends`` hook (kind
``"reward"``) and built with :func:`make_reward_backend`, which reads the ``reward:`` mapping of a
NICE config, creates the backend through the component registry and wraps it in a
:class:`CachedReward`. This module ships two backends; ``dataflex-ops`` ships ``local_model``
(an ``AutoModelForSequenceClassification``).

* ``rule`` (:class:`RuleReward`): a Python function ``"pkg.module:callable"`` called as
  ``fn(prompt, response, reference, meta, **function_kwargs) -> number`` (or batched, when the
  callable has ``batched = True``). Two ready functions: :func:`exact_match` and
  :func:`python_unit_tests`.
* ``http`` (:class:`HttpReward`): one JSON POST per sample to a scoring service, with
  per-request timeout, retries with exponential backoff, a thread pool and an ``on_error``
  policy. Headers come from environment variables (``headers_env``), so secrets never sit in a
  YAML file, a log line, an error message, a spec or a cache file.

Failures (an exception in a rule function, an HTTP request that still fails after its retries,
a response without the number) follow ``on_error``: ``raise`` (default) raises
:class:`RewardError`; ``zero`` scores the sample 0.0; ``skip_sample`` scores it NaN, which the
NICE selector treats as "no reward" (the sample is left out of the kept set). Failed samples are
never cached.

Standard library only: this module never imports numpy or torch.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from dataflex_core import (
    ComponentContext,
    ComponentSpec,
    ConfigError,
    DataError,
    DataflexError,
    PluginError,
    append_jsonl,
    atomic_write_json,
    get_registry,
    parse_config,
    read_jsonl,
)
from dataflex_core.registry import Registry, load_object

__all__ = [
    "ON_ERROR_POLICIES",
    "RewardBackend",
    "RewardError",
    "RewardFailure",
    "apply_on_error",
    "RewardCache",
    "CachedReward",
    "RuleRewardConfig",
    "RuleReward",
    "HttpRewardConfig",
    "HttpReward",
    "exact_match",
    "python_unit_tests",
    "extract_code",
    "redact_url",
    "make_reward_backend",
    "reward_config_from_nice_params",
    "reward_backend_specs",
]

log = logging.getLogger(__name__)

#: Values of ``reward.on_error``.
ON_ERROR_POLICIES: tuple[str, ...] = ("raise", "zero", "skip_sample")

OnError = Literal["raise", "zero", "skip_sample"]

#: Keys of the ``reward:`` mapping read by :func:`make_reward_backend` itself; every other key
#: goes to the backend's config class (strictly: a key the backend does not take is an error).
WRAPPER_KEYS: tuple[str, ...] = ("backend", "cache_dir", "cache")


# --------------------------------------------------------------------------- protocol, errors


@runtime_checkable
class RewardBackend(Protocol):
    """What a reward backend provides (see the module docstring)."""

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None] | None = None,
        metas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[float]:
        """One reward per sample, in order."""
        ...

    def spec(self) -> dict[str, Any]:
        """JSON-safe identity of what the backend computes (its cache namespace); no secrets."""
        ...


class RewardError(DataflexError):
    """A reward could not be computed (``on_error: raise``), or a backend broke its contract."""


@dataclass(frozen=True)
class RewardFailure:
    """The outcome of a sample whose reward could not be computed.

    Attributes:
        message: What went wrong, free of secrets.
        cancelled: True when the sample was not attempted because another one had already
            failed under ``on_error: raise``.
    """

    message: str
    cancelled: bool = False


Outcome = float | RewardFailure


def apply_on_error(outcomes: Sequence[Outcome], policy: str, what: str) -> list[float]:
    """Turn per-sample outcomes into rewards according to ``on_error``.

    Args:
        outcomes: A float or a :class:`RewardFailure` per sample.
        policy: ``raise``, ``zero`` or ``skip_sample``.
        what: The backend, for messages (``"reward backend 'http'"``).

    Returns:
        One float per sample: failures become 0.0 (``zero``) or NaN (``skip_sample``), and one
        WARNING per call says how many failed and why the first one did.

    Raises:
        RewardError: ``policy`` is ``raise`` and a sample failed (the message names the first
            failed sample and counts the others).
    """
    failed = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, RewardFailure)]
    if not failed:
        return [float(o) for o in outcomes]  # type: ignore[arg-type]
    real = [(i, o) for i, o in failed if not o.cancelled] or failed
    first_i, first = real[0]
    if policy == "raise":
        others = len(real) - 1
        more = f" ({others} more sample(s) of this batch failed too)" if others else ""
        raise RewardError(
            f"{what}: sample {first_i} failed: {first.message}{more}. Fix the cause, or set "
            "reward.on_error: zero (score failures 0) or skip_sample (leave them out)."
        )
    if policy not in ("zero", "skip_sample"):
        raise ConfigError(
            f"on_error must be one of {', '.join(ON_ERROR_POLICIES)}, got {policy!r}."
        )
    fill = 0.0 if policy == "zero" else math.nan
    log.warning(
        "%s: %d of %d sample(s) failed and were scored %s (on_error: %s); first failure "
        "(sample %d): %s",
        what,
        len(failed),
        len(outcomes),
        fill,
        policy,
        first_i,
        first.message,
    )
    return [fill if isinstance(o, RewardFailure) else float(o) for o in outcomes]


def _check_batch(
    prompts: Sequence[str],
    responses: Sequence[str],
    references: Sequence[str | None] | None,
    metas: Sequence[Mapping[str, Any] | None] | None,
    what: str,
) -> tuple[list[str], list[str], list[str | None], list[dict[str, Any]]]:
    """Validate a batch; returns lists, with missing references None and missing metas ``{}``."""
    for name, seq in (("prompts", prompts), ("responses", responses)):
        if isinstance(seq, (str, bytes)):
            raise DataError(f"{what}: {name} must be a list of strings, got a single string.")
    n = len(prompts)
    if len(responses) != n:
        raise DataError(f"{what}: got {n} prompts and {len(responses)} responses; pair them.")
    if references is None:
        refs: list[str | None] = [None] * n
    else:
        if isinstance(references, (str, bytes)) or len(references) != n:
            raise DataError(
                f"{what}: references must be a list with one entry (a string or None) per "
                f"prompt; got {type(references).__name__} for {n} prompts."
            )
        refs = list(references)
    if metas is None:
        meta_list: list[dict[str, Any]] = [{} for _ in range(n)]
    else:
        if len(metas) != n:
            raise DataError(f"{what}: got {len(metas)} metas for {n} prompts.")
        meta_list = []
        for i, m in enumerate(metas):
            if m is not None and not isinstance(m, Mapping):
                raise DataError(
                    f"{what}: meta {i} must be a mapping or None, got {type(m).__name__}."
                )
            meta_list.append(dict(m or {}))
    for i in range(n):
        if not isinstance(prompts[i], str) or not isinstance(responses[i], str):
            raise DataError(
                f"{what}: sample {i} must have a string prompt and response, got "
                f"{type(prompts[i]).__name__} and {type(responses[i]).__name__}."
            )
        if refs[i] is not None and not isinstance(refs[i], str):
            raise DataError(
                f"{what}: reference {i} must be a string or None, got {type(refs[i]).__name__}."
            )
    return list(prompts), list(responses), refs, meta_list


def _as_reward(value: Any) -> Outcome:
    """A number (or a numeric string) as a float; anything else is a failure."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return RewardFailure(f"expected a number, got the string {value[:80]!r}")
    try:  # numpy scalars and other number-likes
        return float(value.__float__())
    except Exception:  # noqa: BLE001 - anything without a float value is a failure
        return RewardFailure(f"expected a number, got {type(value).__name__}")


def _spec_json(spec: Any, what: str) -> str:
    try:
        return json.dumps(spec, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{what}: spec() must return JSON-safe data: {exc}.") from exc


class _OutcomeBackend:
    """Shared shell of the backends here: ``score`` = ``score_outcomes`` + the on_error policy."""

    what = "reward backend"
    on_error: str = "raise"

    def score_outcomes(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None] | None = None,
        metas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Outcome]:
        raise NotImplementedError

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None] | None = None,
        metas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[float]:
        """One reward per sample; failures follow ``on_error`` (see :func:`apply_on_error`)."""
        outcomes = self.score_outcomes(prompts, responses, references, metas)
        return apply_on_error(outcomes, self.on_error, self.what)


# --------------------------------------------------------------------------- cache


class RewardCache:
    """Rewards by ``sha256(backend spec, prompt, response, reference)``.

    In memory, or persisted as JSONL in ``cache_dir`` (one file per backend spec,
    ``reward_cache-<spec hash>.jsonl``, records ``{"key": sha256, "reward": float}``, beside a
    ``.spec.json`` that records the spec for people). Writes are whole-line appends
    (:func:`dataflex_core.append_jsonl`), so a killed run loses at most its last line and
    concurrent writers do not corrupt the file. Only finite rewards are stored. ``meta`` is not
    part of the key (spec §2.7): a backend whose reward depends on ``meta`` must put what matters
    into its spec, or be used with ``cache: false``.

    Args:
        spec: The backend's :meth:`RewardBackend.spec`.
        cache_dir: Folder of the JSONL file; None keeps the cache in memory.
    """

    def __init__(self, spec: Mapping[str, Any], cache_dir: str | os.PathLike[str] | None = None):
        self.spec_json = _spec_json(dict(spec), "reward cache")
        self.spec_hash = hashlib.sha256(self.spec_json.encode("utf-8")).hexdigest()
        self._values: dict[str, float] = {}
        self._lock = threading.Lock()
        self.path: Path | None = None
        if cache_dir is not None:
            folder = Path(cache_dir)
            self.path = folder / f"reward_cache-{self.spec_hash[:16]}.jsonl"
            spec_path = folder / f"reward_cache-{self.spec_hash[:16]}.spec.json"
            if not spec_path.exists():
                atomic_write_json(spec_path, json.loads(self.spec_json))
            if self.path.exists():
                for record in read_jsonl(self.path):
                    key, value = record.get("key"), record.get("reward")
                    if isinstance(key, str) and isinstance(value, (int, float)):
                        self._values[key] = float(value)

    def key(self, prompt: str, response: str, reference: str | None) -> str:
        """The cache key of one sample."""
        payload = json.dumps(
            [self.spec_json, prompt, response, reference], ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> float | None:
        with self._lock:
            return self._values.get(key)

    def put_many(self, items: Mapping[str, float]) -> None:
        """Store finite rewards (others are ignored), appending them to the file if any."""
        new = {k: float(v) for k, v in items.items() if math.isfinite(v)}
        with self._lock:
            new = {k: v for k, v in new.items() if self._values.get(k) != v}
            if not new:
                return
            self._values.update(new)
            if self.path is not None:
                append_jsonl(self.path, ({"key": k, "reward": v} for k, v in new.items()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._values


class CachedReward:
    """A reward backend behind a :class:`RewardCache` (what :func:`make_reward_backend` returns).

    Only cache misses reach the backend, each distinct ``(prompt, response, reference)`` of a
    batch once. For backends with ``score_outcomes`` (the ones in this module) the successful
    rewards are cached even when another sample of the batch fails; for other backends every
    finite reward is cached, so a third-party backend should return NaN, not a placeholder, for
    a sample it could not score.

    Attributes:
        backend: The wrapped backend.
        cache: The cache.
        hits: Samples answered from the cache so far.
        misses: Samples sent to the backend so far.
    """

    def __init__(self, backend: Any, cache: RewardCache, what: str = "reward backend") -> None:
        self.backend = backend
        self.cache = cache
        self.what = what
        self.hits = 0
        self.misses = 0

    def spec(self) -> dict[str, Any]:
        return dict(self.backend.spec())

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None] | None = None,
        metas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[float]:
        """One reward per sample; cached rewards are reused, the rest scored in one batch."""
        p, r, refs, ms = _check_batch(prompts, responses, references, metas, self.what)
        keys = [self.cache.key(p[i], r[i], refs[i]) for i in range(len(p))]
        out: list[float | None] = [self.cache.get(k) for k in keys]
        todo: dict[str, int] = {}  # key -> first sample with it
        for i, (k, v) in enumerate(zip(keys, out, strict=True)):
            if v is None and k not in todo:
                todo[k] = i
        self.hits += sum(v is not None for v in out)
        self.misses += len(todo)
        if todo:
            rows = list(todo.values())
            args = ([p[i] for i in rows], [r[i] for i in rows], [refs[i] for i in rows])
            sub_metas = [ms[i] for i in rows]
            if hasattr(self.backend, "score_outcomes"):
                outcomes = list(self.backend.score_outcomes(*args, sub_metas))
                self._check_len(outcomes, len(rows))
                self.cache.put_many(
                    {
                        keys[i]: float(o)
                        for i, o in zip(rows, outcomes, strict=True)
                        if not isinstance(o, RewardFailure)
                    }
                )
                what = getattr(self.backend, "what", self.what)
                values = apply_on_error(outcomes, getattr(self.backend, "on_error", "raise"), what)
            else:
                values = [float(v) for v in self.backend.score(*args, sub_metas)]
                self._check_len(values, len(rows))
                self.cache.put_many({keys[i]: v for i, v in zip(rows, values, strict=True)})
            fresh = {keys[i]: v for i, v in zip(rows, values, strict=True)}
            out = [fresh[k] if v is None else v for k, v in zip(keys, out, strict=True)]
        return [float(v) for v in out]  # type: ignore[arg-type]

    def _check_len(self, values: Sequence[Any], n: int) -> None:
        if len(values) != n:
            raise RewardError(
                f"{self.what}: the backend returned {len(values)} rewards for {n} samples."
            )


# --------------------------------------------------------------------------- rule


@dataclass(frozen=True)
class RuleRewardConfig:
    """Config of the ``rule`` reward backend.

    Attributes:
        function: ``"pkg.module:callable"`` called as ``fn(prompt, response, reference, meta,
            **function_kwargs) -> number``. A callable with the attribute ``batched = True`` is
            called once per chunk of ``batch_size`` samples with lists instead and returns a list
            of numbers.
        function_kwargs: Keyword arguments passed to every call (JSON-safe; part of the spec).
        batch_size: Chunk size for batched functions.
        concurrency: Threads calling a per-sample function (1: in order, in this thread).
        on_error: ``raise``, ``zero`` or ``skip_sample`` when the function raises or returns
            something that is not a number.
    """

    function: str
    function_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    concurrency: int = 1
    on_error: OnError = "raise"

    def __post_init__(self) -> None:
        if ":" not in self.function:
            raise ConfigError(
                f"function must be written as 'package.module:callable', got {self.function!r}; "
                "e.g. 'dataflex_select.rewards:exact_match'."
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}.")
        _spec_json(self.function_kwargs, "function_kwargs")


class RuleReward(_OutcomeBackend):
    """Reward backend ``rule``: a Python function of ``(prompt, response, reference, meta)``.

    Args:
        config: A :class:`RuleRewardConfig` or a mapping of its keys.
        context: Runtime facts (unused).

    Raises:
        ConfigError / PluginError: the function cannot be imported or is not callable.
    """

    config_class = RuleRewardConfig

    def __init__(
        self,
        config: RuleRewardConfig | Mapping[str, Any],
        context: ComponentContext | None = None,
    ) -> None:
        self.config: RuleRewardConfig = parse_config(
            RuleRewardConfig, config, where="reward 'rule'"
        )
        self.context = context if context is not None else ComponentContext()
        fn = load_object(self.config.function, "reward function")
        if not callable(fn):
            raise ConfigError(f"reward function {self.config.function!r} is not callable.")
        self.function: Callable[..., Any] = fn
        self.batched = getattr(fn, "batched", False) is True
        self.on_error = self.config.on_error
        self.what = f"reward backend 'rule' ({self.config.function})"

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "backend": "rule",
            "function": self.config.function,
            "function_kwargs": dict(self.config.function_kwargs),
            "batched": self.batched,
        }
        version = getattr(self.function, "reward_version", None)
        if version is not None:  # bump it on the function to invalidate cached rewards
            spec["version"] = str(version)
        return spec

    def score_outcomes(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None] | None = None,
        metas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Outcome]:
        """A float or a :class:`RewardFailure` per sample (no policy applied)."""
        p, r, refs, ms = _check_batch(prompts, responses, references, metas, self.what)
        kwargs = dict(self.config.function_kwargs)
        if self.batched:
            return self._batched(p, r, refs, ms, kwargs)

        def one(i: int) -> Outcome:
            try:
                value = self.function(p[i], r[i], refs[i], ms[i], **kwargs)
            except Exception as exc:  # noqa: BLE001 - a failing sample follows on_error
                return RewardFailure(f"{type(exc).__name__}: {exc}")
            return _as_reward(value)

        if self.config.concurrency == 1 or len(p) <= 1:
            return [one(i) for i in range(len(p))]
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.config.concurrency, len(p)), thread_name_prefix="reward-rule"
        ) as pool:
            return list(pool.map(one, range(len(p))))

    def _batched(
        self,
        p: list[str],
        r: list[str],
        refs: list[str | None],
        ms: list[dict[str, Any]],
        kwargs: dict[str, Any],
    ) -> list[Outcome]:
        out: list[Outcome] = []
        bs = self.config.batch_size
        for start in range(0, len(p), bs):
            sl = slice(start, start + bs)
            n = len(p[sl])
            try:
                values = list(self.function(p[sl], r[sl], refs[sl], ms[sl], **kwargs))
            except Exception as exc:  # noqa: BLE001 - the whole chunk follows on_error
                out.extend([RewardFailure(f"{type(exc).__name__}: {exc}")] * n)
                continue
            if len(values) != n:
                raise RewardError(
                    f"{self.what}: the batched function returned {len(values)} values for "
                    f"{n} samples."
                )
            out.extend(_as_reward(v) for v in values)
        return out


_WS = re.compile(r"\s+")


def _normalise(text: str) -> str:
    return _WS.sub(" ", text).strip().casefold()


def exact_match(
    prompt: str, response: str, reference: str | None, meta: Mapping[str, Any] | None = None
) -> float:
    """1.0 when the response equals the reference up to case and whitespace, else 0.0.

    Whitespace runs count as one space and leading/trailing whitespace is ignored.

    Raises:
        DataError: the sample has no reference.
    """
    if reference is None:
        raise DataError("exact_match needs a reference answer; this sample has none.")
    return 1.0 if _normalise(response) == _normalise(reference) else 0.0


_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The body of the first fenced code block (```...```) of ``text``, or ``text`` itself."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


#: Prepended to the program of :func:`python_unit_tests`: a best-effort guard that makes
#: sockets fail (connect, bind, DNS). It is not a security boundary; run untrusted code in a
#: container or VM.
_NETWORK_GUARD = """\
import socket as _df_socket
def _df_no_network(*_a, **_k):
    raise OSError("network access is disabled in DataFlex reward unit tests")
for _df_name in ("connect", "connect_ex", "bind", "sendto"):
    setattr(_df_socket.socket, _df_name, _df_no_network)
_df_socket.getaddrinfo = _df_no_network
_df_socket.create_connection = _df_no_network
del _df_socket, _df_name
"""

#: Appended: runs unittest.TestCase classes the tests define (plain asserts run by themselves).
_UNITTEST_EPILOGUE = """

import sys as _df_sys, unittest as _df_unittest
_df_cases = [v for v in list(globals().values()) if isinstance(v, type)
             and issubclass(v, _df_unittest.TestCase) and v is not _df_unittest.TestCase]
if _df_cases:
    _df_suite = _df_unittest.TestSuite(
        _df_unittest.defaultTestLoader.loadTestsFromTestCase(c) for c in _df_cases)
    _df_result = _df_unittest.TextTestRunner(stream=_df_sys.stderr, verbosity=0).run(_df_suite)
    _df_sys.exit(0 if _df_result.wasSuccessful() else 1)
"""


def python_unit_tests(
    prompt: str,
    response: str,
    reference: str | None,
    meta: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 10.0,
) -> float:
    """1.0 when the response's code passes the reference's tests, else 0.0.

    The program is the response's code (the first fenced code block if there is one), then the
    reference (test code: ``assert`` statements, or ``unittest.TestCase`` classes, which are run),
    written to a fresh temporary folder and run there with ``sys.executable -I`` (isolated mode:
    no user site, no ``PYTHON*`` variables, a minimal environment, stdin closed). Exit status 0
    scores 1.0; any other status, or running past ``timeout_s`` (the whole process group is then
    killed), scores 0.0.

    Sockets are disabled by a best-effort guard prepended to the program. This is **not** a
    sandbox: model-generated code can still read and write files as your user. Run untrusted
    generations in a container or VM.

    Args:
        timeout_s: Wall-clock limit of the program (set it with ``function_kwargs``).

    Raises:
        DataError: the sample has no reference (test code).
    """
    if reference is None:
        raise DataError(
            "python_unit_tests needs the test code as the reference answer; this sample has none."
        )
    if not timeout_s > 0:
        raise ConfigError(f"python_unit_tests: timeout_s must be > 0, got {timeout_s}.")
    program = f"{_NETWORK_GUARD}\n{extract_code(response)}\n\n{reference}\n{_UNITTEST_EPILOGUE}"
    with tempfile.TemporaryDirectory(prefix="dataflex-reward-") as tmp:
        path = Path(tmp, "solution_and_tests.py")
        path.write_text(program, encoding="utf-8")
        env = {
            "PATH": os.defpath,
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(path)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=os.name == "posix",
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log.debug("python_unit_tests: the program ran past %.1f s; scored 0.", timeout_s)
            return 0.0
        return 1.0 if code == 0 else 0.0


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        if os.name == "posix":
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - no process groups
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# --------------------------------------------------------------------------- http

#: Default ``request_template``: ``{"prompt": ..., "response": ..., "reference": ...}``.
DEFAULT_REQUEST_TEMPLATE: dict[str, Any] = {
    "prompt": "{prompt}",
    "response": "{response}",
    "reference": "{reference}",
}

_PLACEHOLDER = re.compile(r"\{(prompt|response|reference)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def redact_url(url: str) -> str:
    """``url`` without user info and query string (what messages and specs show)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    out = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return out + ("?<query redacted>" if parts.query else "")


def _render(node: Any, fields: Mapping[str, str | None]) -> Any:
    """Insert the fields into a JSON template: a string that is exactly ``{name}`` becomes the
    value (``{reference}`` of a sample without one becomes null); placeholders inside longer
    strings are replaced by the text (``""`` for a missing reference). Other braces stay."""
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:
            return fields[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: fields[m.group(1)] or "", node)
    if isinstance(node, Mapping):
        return {k: _render(v, fields) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_render(v, fields) for v in node]
    return node


def _lookup(obj: Any, path: str) -> Any:
    """Follow a dotted path (``"choices.0.score"``) through mappings and lists."""
    done: list[str] = []
    for part in path.split("."):
        where = ".".join(done) or "the top level"
        if isinstance(obj, Mapping):
            if part not in obj:
                keys = ", ".join(map(repr, list(obj)[:10]))
                raise LookupError(f"no key {part!r} at {where} (keys there: {keys or 'none'})")
            obj = obj[part]
        elif isinstance(obj, list):
            try:
                obj = obj[int(part)]
            except (ValueError, IndexError):
                raise LookupError(
                    f"no item {part!r} at {where} (a list of {len(obj)} items)"
                ) from None
        else:
            raise LookupError(f"{where} is a {type(obj).__name__}, not an object or a list")
        done.append(part)
    return obj


def _check_path(path: str, key: str) -> None:
    if not path or any(not part for part in path.split(".")):
        raise ConfigError(
            f"{key} must be a dotted path such as 'score' or 'choices.0.score', got {path!r}."
        )


@dataclass(frozen=True)
class HttpRewardConfig:
    """Config of the ``http`` reward backend.

    Attributes:
        url: The endpoint; each sample is one ``POST`` of a JSON body. Put no secret in it (user
            info and query string are redacted from messages and specs anyway).
        request_template: The JSON body, as a mapping (or a JSON object string). String values
            may contain ``{prompt}``, ``{response}``, ``{reference}``: a string that is exactly a
            placeholder becomes the value itself (``{reference}`` → null when the sample has
            none); inside a longer string the text is inserted. Insertion happens on the parsed
            JSON, so quotes and newlines in the texts are always escaped correctly.
        response_path: Where the reward is in the response JSON: a dotted path to a number
            (``"score"``, ``"choices.0.score"``; numeric strings are accepted), or a label map
            such as ``{win: 1, tie: 0.5, loss: 0}``, applied to the string found at
            ``response_label_path`` (matched ignoring case and surrounding whitespace).
        response_label_path: Dotted path of the label, used with a label map only.
        headers_env: ``{Header-Name: ENV_VAR}``: the header's value is read from the environment
            at call time. The value may also be a template with ``${VAR}`` references, e.g.
            ``Authorization: "Bearer ${OPENAI_API_KEY}"``. A literal value is refused, so no
            secret can sit in the config.
        timeout_s: Per-request timeout (connect, and each read) in seconds.
        max_retries: Retries after the first attempt, on timeouts, connection errors, 5xx, 408
            and 429; other 4xx and malformed answers are not retried.
        retry_backoff_s: Wait before the first retry; doubled at each further one (capped at
            60 s).
        concurrency: Requests in flight at once (a thread pool).
        on_error: ``raise`` (default), ``zero`` or ``skip_sample`` (NaN) for a sample that still
            fails after its retries.
    """

    url: str
    request_template: dict[str, Any] | str = field(
        default_factory=lambda: dict(DEFAULT_REQUEST_TEMPLATE)
    )
    response_path: str | dict[str, float] = "score"
    response_label_path: str = "label"
    headers_env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    max_retries: int = 3
    retry_backoff_s: float = 1.0
    concurrency: int = 8
    on_error: OnError = "raise"

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"url must be an http:// or https:// URL, got {redact_url(self.url)!r}."
            )
        template: Any = self.request_template
        if isinstance(template, str):
            try:
                template = json.loads(template)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"request_template is not valid JSON: {exc}.") from exc
            if not isinstance(template, dict):
                raise ConfigError("request_template must be a JSON object.")
            object.__setattr__(self, "request_template", template)
        _spec_json(template, "request_template")
        if isinstance(self.response_path, str):
            _check_path(self.response_path, "response_path")
        else:
            if not self.response_path:
                raise ConfigError("response_path as a label map must have at least one label.")
            folded = [str(k).strip().casefold() for k in self.response_path]
            if len(set(folded)) != len(folded):
                raise ConfigError(
                    f"response_path labels {sorted(self.response_path)} collide when case and "
                    "surrounding whitespace are ignored."
                )
            for label, value in self.response_path.items():
                if not math.isfinite(value):
                    raise ConfigError(
                        f"response_path label {label!r} maps to {value}; use a finite number."
                    )
            _check_path(self.response_label_path, "response_label_path")
        for header, source in self.headers_env.items():
            if not _HEADER_NAME.fullmatch(header):
                raise ConfigError(f"headers_env: {header!r} is not a valid HTTP header name.")
            if not (_ENV_NAME.fullmatch(source) or _ENV_REF.search(source)):
                raise ConfigError(
                    f"headers_env[{header!r}] must name an environment variable (e.g. "
                    "MY_API_KEY) or reference them as ${MY_API_KEY}; literal header values are "
                    "refused so that no secret sits in the config."
                )
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}.")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}.")
        if not (self.retry_backoff_s >= 0 and math.isfinite(self.retry_backoff_s)):
            raise ConfigError(f"retry_backoff_s must be >= 0, got {self.retry_backoff_s}.")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}.")


class _Retry(Exception):
    """A transient failure: worth another attempt."""


class _Fatal(Exception):
    """A failure that another attempt would repeat."""


_MAX_BACKOFF_S = 60.0


class HttpReward(_OutcomeBackend):
    """Reward backend ``http``: one JSON ``POST`` per sample to a scoring service.

    Redirects are not followed (a redirect could carry the headers to another host); a 3xx
    answer is an error. Proxies from the usual environment variables are honoured.

    Args:
        config: An :class:`HttpRewardConfig` or a mapping of its keys.
        context: Runtime facts (unused).
    """

    config_class = HttpRewardConfig

    def __init__(
        self,
        config: HttpRewardConfig | Mapping[str, Any],
        context: ComponentContext | None = None,
    ) -> None:
        self.config: HttpRewardConfig = parse_config(
            HttpRewardConfig, config, where="reward 'http'"
        )
        self.context = context if context is not None else ComponentContext()
        self.on_error = self.config.on_error
        self.url_shown = redact_url(self.config.url)
        self.what = f"reward backend 'http' ({self.url_shown})"
        self._opener: Any = None

    def spec(self) -> dict[str, Any]:
        cfg = self.config
        spec: dict[str, Any] = {
            "backend": "http",
            "url": self.url_shown,
            "url_sha256": hashlib.sha256(cfg.url.encode("utf-8")).hexdigest(),
            "request_template": cfg.request_template,
            "response_path": cfg.response_path,
            "headers": sorted(cfg.headers_env),  # names only, never values
        }
        if not isinstance(cfg.response_path, str):
            spec["response_label_path"] = cfg.response_label_path
        return spec

    # ---------------------------------------------------------------- headers

    def _headers(self) -> tuple[dict[str, str], list[str]]:
        """Request headers with values read from the environment now, and the secret values
        (to scrub them from any text that might reach a message)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        secrets: list[str] = []

        def env(var: str, header: str) -> str:
            value = os.environ.get(var)
            if value is None:
                raise ConfigError(
                    f"{self.what}: header {header!r} reads the environment variable {var!r}, "
                    "which is not set; export it before the run (its value is never logged)."
                )
            if value:
                secrets.append(value)
            return value

        for header, source in self.config.headers_env.items():
            if _ENV_NAME.fullmatch(source):
                value = env(source, header)
            else:
                value = _ENV_REF.sub(lambda m, h=header: env(m.group(1), h), source)
            if "\n" in value or "\r" in value:
                raise ConfigError(
                    f"{self.what}: the value of header {header!r} (from the environment) "
                    "contains a line break."
                )
            headers[header] = value
            if value:
                secrets.append(value)
        secrets.sort(key=len, reverse=True)
        return headers, secrets

    @staticmethod
    def _scrub(text: str, secrets: Sequence[str]) -> str:
        for secret in secrets:
            text = text.replace(secret, "<redacted>")
        return text

    # ---------------------------------------------------------------- requests

    def _get_opener(self) -> Any:
        if self._opener is None:
            import urllib.request

            class _NoRedirect(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                    return None  # the 3xx then surfaces as an HTTPError

            self._opener = urllib.request.build_opener(_NoRedirect())
        return self._opener

    def _post(self, body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> bytes:
        import http.client
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.config.url, data=body, headers=dict(headers), method="POST"
        )
        try:
            with self._get_opener().open(request, timeout=self.config.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            try:
                snippet = exc.read(300).decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the body is only decoration
                snippet = ""
            snippet = self._scrub(" ".join(snippet.split()), secrets)[:200]
            detail = f"HTTP {exc.code}" + (f": {snippet}" if snippet else "")
            if exc.code >= 500 or exc.code in (408, 429):
                raise _Retry(detail) from None
            if 300 <= exc.code < 400:
                raise _Fatal(f"{detail} (redirects are not followed; use the final URL)") from None
            raise _Fatal(detail) from None
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None)
            if isinstance(reason, (TimeoutError, OSError)):
                exc = reason
            if type(exc).__name__ == "SSLCertVerificationError":  # retrying cannot fix it
                raise _Fatal(self._scrub(f"{type(exc).__name__}: {exc}", secrets)) from None
            if isinstance(exc, TimeoutError):
                detail = f"timed out after {self.config.timeout_s:g} s"
            else:
                detail = f"{type(exc).__name__}: {exc}"
            raise _Retry(self._scrub(detail, secrets)) from None

    def _extract(self, raw: bytes, secrets: Sequence[str]) -> Outcome:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            snippet = self._scrub(raw[:120].decode("utf-8", "replace"), secrets)
            return RewardFailure(f"the response is not JSON: {snippet!r}")
        cfg = self.config
        try:
            if isinstance(cfg.response_path, str):
                value = _as_reward(_lookup(data, cfg.response_path))
                if isinstance(value, RewardFailure):
                    return RewardFailure(f"at {cfg.response_path!r}: {value.message}")
                return value
            label = _lookup(data, cfg.response_label_path)
        except LookupError as exc:
            path = (
                cfg.response_path if isinstance(cfg.response_path, str) else cfg.response_label_path
            )
            return RewardFailure(f"the response has no {path!r}: {self._scrub(str(exc), secrets)}")
        if not isinstance(label, (str, int, float)) or isinstance(label, bool):
            return RewardFailure(
                f"the label at {cfg.response_label_path!r} is a {type(label).__name__}, "
                "not a string"
            )
        table = {str(k).strip().casefold(): float(v) for k, v in cfg.response_path.items()}
        key = str(label).strip().casefold()
        if key not in table:
            shown = self._scrub(str(label), secrets)[:80]
            return RewardFailure(
                f"unknown label {shown!r} at {cfg.response_label_path!r}; known labels: "
                f"{', '.join(sorted(map(str, cfg.response_path)))}"
            )
        return table[key]

    def _score_one(
        self,
        prompt: str,
        response: str,
        reference: str | None,
        headers: Mapping[str, str],
        secrets: Sequence[str],
        stop: threading.Event,
    ) -> Outcome:
        if stop.is_set():
            return RewardFailure("not attempted: another sample had already failed", True)
        fields = {"prompt": prompt, "response": response, "reference": reference}
        body = json.dumps(_render(self.config.request_template, fields), ensure_ascii=False).encode(
            "utf-8"
        )
        attempts = 1 + self.config.max_retries
        last = ""
        for attempt in range(attempts):
            if attempt:
                wait = min(self.config.retry_backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
                log.debug(
                    "%s: attempt %d/%d failed (%s); retrying in %.2f s",
                    self.what,
                    attempt,
                    attempts,
                    last,
                    wait,
                )
                if stop.wait(wait):
                    return RewardFailure("not attempted: another sample had already failed", True)
            try:
                raw = self._post(body, headers, secrets)
            except _Retry as exc:
                last = str(exc)
                continue
            except _Fatal as exc:
                return RewardFailure(
                    f"POST {self.url_shown} failed: {exc} (not retried: another attempt would "
                    "fail the same way)"
                )
            return self._extract(raw, secrets)
        return RewardFailure(
            f"POST {self.url_shown} failed after {attempts} attempt(s); last error: {last}"
        )

    def score_outcomes(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None] | None = None,
        metas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Outcome]:
        """A float or a :class:`RewardFailure` per sample (no policy applied). Under
        ``on_error: raise`` the samples not yet started when one fails are not attempted."""
        p, r, refs, _ = _check_batch(prompts, responses, references, metas, self.what)
        if not p:
            return []
        headers, secrets = self._headers()
        stop = threading.Event()
        out: list[Outcome] = [RewardFailure("not attempted", True)] * len(p)
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.config.concurrency, len(p)), thread_name_prefix="reward-http"
        ) as pool:
            futures = {
                pool.submit(self._score_one, p[i], r[i], refs[i], headers, secrets, stop): i
                for i in range(len(p))
            }
            for future in concurrent.futures.as_completed(futures):
                i = futures[future]
                out[i] = future.result()
                if isinstance(out[i], RewardFailure) and self.on_error == "raise":
                    stop.set()
        return out


# --------------------------------------------------------------------------- building


def make_reward_backend(
    config: Mapping[str, Any],
    context: ComponentContext | None = None,
    *,
    registry: Registry | None = None,
) -> Any:
    """Build the reward backend of a NICE ``reward:`` mapping, behind a cache.

    Keys read here: ``backend`` (required: a registered reward backend such as ``rule``,
    ``http``, ``local_model``, or ``"package.module:Class"``), ``cache_dir`` (null: an
    in-memory cache) and ``cache`` (default true; false returns the bare backend). Every other
    key is the backend's own and is validated strictly by its config class.

    Args:
        config: The ``reward:`` mapping (after :func:`reward_config_from_nice_params` for
            predecessor configs).
        context: Runtime facts handed to the backend's factory.
        registry: The component registry (default: :func:`dataflex_core.get_registry`).

    Returns:
        A :class:`CachedReward` (or the bare backend with ``cache: false``).
    """
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"reward must be a mapping of keys to values, got {type(config).__name__}."
        )
    cfg = dict(config)
    reg = registry if registry is not None else get_registry()
    backend = cfg.pop("backend", None)
    if not isinstance(backend, str) or not backend:
        names = ", ".join(reg.names("reward")) or "(none registered)"
        raise ConfigError(
            f"reward.backend is required: one of {names}, or 'package.module:Class'; got "
            f"{backend!r}."
        )
    cache_dir = cfg.pop("cache_dir", None)
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ConfigError(f"reward.cache_dir must be a path or null, got {cache_dir!r}.")
    use_cache = cfg.pop("cache", True)
    if not isinstance(use_cache, bool):
        raise ConfigError(f"reward.cache must be true or false, got {use_cache!r}.")
    obj = reg.create("reward", backend, context=context, **cfg)
    for method in ("score", "spec"):
        if not callable(getattr(obj, method, None)):
            raise PluginError(
                f"reward backend {backend!r} ({type(obj).__name__}) has no {method}() method; a "
                "reward backend provides score(prompts, responses, references, metas) and spec()."
            )
    if not use_cache:
        return obj
    what = getattr(obj, "what", f"reward backend {backend!r}")
    return CachedReward(obj, RewardCache(obj.spec(), cache_dir), what=what)


# --------------------------------------------------------------------------- predecessor keys

#: Predecessor ``reward_model_backend`` values → (``reward.backend``, extra ``reward`` keys).
_LEGACY_BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "local_vllm": ("local_model", {"engine": "vllm"}),
    "api": ("http", {}),
}

#: Predecessor ``reward_backend_params`` keys with a direct equivalent.
_LEGACY_RENAMES: dict[str, str] = {
    "hf_model_name_or_path": "model_name_or_path",
    "api_url": "url",
}

#: Predecessor keys that configured its generative vLLM / chat-API judge and have no
#: counterpart (the judge prompt is now the ``request_template`` of an ``http`` backend).
_LEGACY_DROPPED = ("model_name", "temperature")


def _legacy_params(
    raw: Mapping[str, Any], legacy_backend: str | None, reward_backend: str | None
) -> tuple[dict[str, Any], str | None, list[str], list[str]]:
    """Flatten and translate predecessor ``reward_backend_params``.

    Returns ``(reward keys, predecessor backend chosen from the nested form, notes, dropped)``.
    """
    nested = [k for k in _LEGACY_BACKENDS if isinstance(raw.get(k), Mapping)]
    chosen: str | None = None
    if nested:
        back = {v[0]: k for k, v in _LEGACY_BACKENDS.items()}
        chosen = legacy_backend or back.get(reward_backend or "")
        if chosen is None:
            chosen = nested[0] if len(nested) == 1 else "local_vllm"  # the predecessor default
        flat = {k: v for k, v in raw.items() if k not in _LEGACY_BACKENDS}
        flat.update(dict(raw.get(chosen) or {}))
    else:
        flat = dict(raw)
    out: dict[str, Any] = {}
    notes: list[str] = []
    dropped: list[str] = []
    for key, value in flat.items():
        if key in _LEGACY_RENAMES:
            out[_LEGACY_RENAMES[key]] = value
            notes.append(f"{key} -> reward.{_LEGACY_RENAMES[key]}")
        elif key == "api_key":
            if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
                raise ConfigError(
                    "reward_backend_params.api_key holds what looks like a literal key; DataFlex "
                    "never reads secrets from configs. Export the key as an environment variable "
                    "and write reward.headers_env: {Authorization: 'Bearer ${YOUR_VAR}'} instead "
                    "(the value was not logged)."
                )
            out["headers_env"] = {"Authorization": f"Bearer ${{{value}}}"}
            notes.append(f"api_key -> reward.headers_env.Authorization ('Bearer ${{{value}}}')")
        elif key.startswith("vllm_") or key in _LEGACY_DROPPED:
            dropped.append(key)
        else:
            out[key] = value
            notes.append(f"{key} -> reward.{key}")
    return out, chosen, notes, dropped


def reward_config_from_nice_params(
    params: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Map the predecessor's NICE reward keys onto the ``reward:`` mapping (spec §2.7).

    * ``reward_model_path`` → ``reward.model_name_or_path`` (and ``reward.backend:
      local_model`` if no backend is named);
    * ``reward_model_backend: local_vllm`` → ``reward.backend: local_model`` with ``engine:
      vllm``; ``api`` → ``reward.backend: http``;
    * ``reward_backend_params`` → ``reward.*``; the predecessor's nested form
      ``{local_vllm: {...}, api: {...}}`` is flattened for the chosen backend,
      ``hf_model_name_or_path`` → ``model_name_or_path``, ``api_url`` → ``url``, ``api_key``
      (the name of an environment variable) → ``headers_env: {Authorization: "Bearer
      ${NAME}"}``; ``vllm_*``, ``model_name`` and ``temperature`` (settings of the
      predecessor's generative judge) are dropped.

    Each deprecated key used logs one WARNING. A deprecated key that contradicts the
    ``reward:`` mapping is a :class:`ConfigError`.

    Args:
        params: The NICE selector's parameters (may contain ``reward`` and the old keys).

    Returns:
        ``(reward config, the other params)``; the reward config may be empty.
    """
    remaining = dict(params)
    reward = remaining.pop("reward", None)
    if reward is not None and not isinstance(reward, Mapping):
        raise ConfigError(
            f"reward must be a mapping of keys to values, got {type(reward).__name__}."
        )
    cfg: dict[str, Any] = dict(reward or {})

    def put(key: str, value: Any, source: str) -> None:
        if key in cfg and cfg[key] != value:
            raise ConfigError(
                f"the deprecated key {source} sets reward.{key} = {value!r}, but reward.{key} is "
                f"already {cfg[key]!r}; remove {source} (or make them agree)."
            )
        cfg[key] = value

    legacy_backend: str | None = None
    if "reward_model_backend" in remaining:
        old = remaining.pop("reward_model_backend")
        old_key = str(old).lower() if isinstance(old, str) else old
        if old_key not in _LEGACY_BACKENDS:
            raise ConfigError(
                f"reward_model_backend must be one of {', '.join(_LEGACY_BACKENDS)} (deprecated; "
                f"write reward.backend: rule | local_model | http), got {old!r}."
            )
        legacy_backend = old_key
        new, extra = _LEGACY_BACKENDS[old_key]
        put("backend", new, "reward_model_backend")
        for k, v in extra.items():
            put(k, v, "reward_model_backend")
        shown = ", ".join(f"reward.{k}: {v}" for k, v in extra.items())
        log.warning(
            "NICE key 'reward_model_backend: %s' is deprecated; mapped to reward.backend: %s%s.",
            old_key,
            new,
            f" with {shown}" if shown else "",
        )
    if "reward_model_path" in remaining:
        path = remaining.pop("reward_model_path")
        put("model_name_or_path", path, "reward_model_path")
        implied = "backend" not in cfg
        if implied:
            cfg["backend"] = "local_model"
        log.warning(
            "NICE key 'reward_model_path' is deprecated; mapped to reward.model_name_or_path%s.",
            " (and reward.backend: local_model)" if implied else "",
        )
    if "reward_backend_params" in remaining:
        raw = remaining.pop("reward_backend_params")
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"reward_backend_params must be a mapping, got {type(raw).__name__}.")
        mapped, chosen, notes, dropped = _legacy_params(raw, legacy_backend, cfg.get("backend"))
        if chosen is not None and "backend" not in cfg:
            new, extra = _LEGACY_BACKENDS[chosen]
            cfg["backend"] = new
            for k, v in extra.items():
                cfg.setdefault(k, v)
            notes.insert(0, f"{chosen} -> reward.backend: {new}")
        for key, value in mapped.items():
            put(key, value, f"reward_backend_params.{key}")
        msg = "NICE key 'reward_backend_params' is deprecated; mapped: " + (
            "; ".join(notes) if notes else "nothing"
        )
        if dropped:
            msg += (
                f". Dropped {', '.join(sorted(dropped))}: they configured the predecessor's "
                "generative judge; describe the request with reward.request_template instead"
            )
        log.warning("%s.", msg)
    return cfg, remaining


# --------------------------------------------------------------------------- registration


def reward_backend_specs() -> list[ComponentSpec]:
    """The ``rule`` and ``http`` reward backends (for ``dataflex_register_reward_backends``)."""
    return [
        ComponentSpec(
            kind="reward",
            name="rule",
            factory="dataflex_select.rewards:RuleReward",
            config="dataflex_select.rewards:RuleRewardConfig",
            summary="A Python function of (prompt, response, reference, meta), e.g. exact match "
            "or unit tests run with a timeout.",
            paper="",
        ),
        ComponentSpec(
            kind="reward",
            name="http",
            factory="dataflex_select.rewards:HttpReward",
            config="dataflex_select.rewards:HttpRewardConfig",
            summary="A JSON POST per sample to a scoring service, with timeouts, retries, "
            "concurrency and headers from environment variables.",
            paper="",
        ),
    ]
