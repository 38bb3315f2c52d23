"""The ``dsir`` selector: Data Selection with Importance Resampling (algorithms spec §2.10).

Reference: Xie, Santurkar, Ma, Liang, "Data Selection for Language Models via Importance
Resampling", NeurIPS 2023, arXiv 2302.03169 (official code: p-lambda/dsir).

Each text becomes a bag of hashed n-grams: lowercase, tokenise, and for every n-gram with
``1 <= n <= ngrams`` (joined with single spaces) increment bucket
``int(sha256(utf8(gram)).hexdigest(), 16) mod num_buckets``. Two bucket distributions are fitted,
``p_t`` over the target texts and ``p_r`` over the pool, and each pool row gets the log
importance weight ``log w(x) = <counts(x), log(p_t + 1e-8) - log(p_r + 1e-8)>``. Rows are then
resampled without replacement by Gumbel-top-k on ``log w`` (or the deterministic top-n).

No model is involved: the text of the pool and of the target set are the only signals, so
``log w`` is computed once, at the first scored update, for the whole pool and cached.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    SelectRequest,
    SignalRequest,
    StateError,
    derive,
)
from numpy.typing import ArrayLike, NDArray

from dataflex_select.base import ScoredSelector, ScoredSelectorConfig, signal_rows
from dataflex_select.primitives import generator, top_k

__all__ = [
    "DsirSelectorConfig",
    "DsirSelector",
    "wordpunct_tokenize",
    "hash_bucket",
    "ngram_buckets",
    "ngram_counts",
    "fit_bucket_distribution",
    "dsir_log_ratio",
    "dsir_log_weights",
    "dsir_scores",
    "gumbel_top_k",
    "TOKENS_TO_FIT_PER_BUCKET",
]

#: ``num_tokens_to_fit: auto`` caps the pool fit at this many counted grams per bucket.
TOKENS_TO_FIT_PER_BUCKET = 100_000

#: nltk's ``WordPunctTokenizer`` pattern: runs of word characters, or of other non-space ones.
_WORDPUNCT = re.compile(r"\w+|[^\w\s]+", re.UNICODE | re.MULTILINE | re.DOTALL)

_EPS = 1e-8


@dataclass(frozen=True)
class DsirSelectorConfig(ScoredSelectorConfig):
    """Config of the ``dsir`` selector (spec §2.10), plus the shared keys of §2.0.

    Attributes:
        ngrams: Largest n-gram order (1 = unigrams only); >= 1.
        num_buckets: Number of hash buckets; >= 1.
        tokenizer: ``wordpunct`` (a regex identical to nltk's ``WordPunctTokenizer``; no
            dependency) or ``word_tokenize`` (nltk's, which needs ``nltk`` and its ``punkt`` data).
        num_tokens_to_fit: Cap on the grams counted when fitting ``p_r`` over the pool:
            ``auto`` (``100000 * num_buckets``) or a count.
        text_fields: Fields of the raw example rendered into the text; null means the
            integration's default rendering (prompt + response).
        top_k: Take the deterministic top-n of ``log w`` instead of Gumbel-top-k resampling.
    """

    ngrams: int = 2
    num_buckets: int = 10000
    tokenizer: Literal["wordpunct", "word_tokenize"] = "wordpunct"
    num_tokens_to_fit: Literal["auto"] | int = "auto"
    text_fields: tuple[str, ...] | None = None
    top_k: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ngrams < 1:
            raise ConfigError(f"ngrams must be >= 1, got {self.ngrams!r}.")
        if self.num_buckets < 1:
            raise ConfigError(f"num_buckets must be >= 1, got {self.num_buckets!r}.")
        if isinstance(self.num_tokens_to_fit, int) and self.num_tokens_to_fit < 1:
            raise ConfigError(
                f"num_tokens_to_fit must be 'auto' or a count >= 1, got {self.num_tokens_to_fit!r}."
            )
        if self.text_fields is not None and not self.text_fields:
            raise ConfigError("text_fields must name at least one field, or be null.")
        if self.tokenizer == "word_tokenize" and importlib.util.find_spec("nltk") is None:
            raise ConfigError(
                "tokenizer 'word_tokenize' needs nltk, which is not installed; install it "
                "(`pip install nltk`, plus its 'punkt' data) or use `tokenizer: wordpunct`."
            )

    @property
    def tokens_to_fit(self) -> int:
        """The resolved ``num_tokens_to_fit``."""
        if self.num_tokens_to_fit == "auto":
            return TOKENS_TO_FIT_PER_BUCKET * self.num_buckets
        return int(self.num_tokens_to_fit)


# --------------------------------------------------------------------------- features


def wordpunct_tokenize(text: str) -> list[str]:
    """Split ``text`` like nltk's ``WordPunctTokenizer`` (pattern ``\\w+|[^\\w\\s]+``).

    Example:
        >>> wordpunct_tokenize("Good muffins cost $3.88 in New York.")
        ['Good', 'muffins', 'cost', '$', '3', '.', '88', 'in', 'New', 'York', '.']
    """
    return _WORDPUNCT.findall(text)


def _tokenizer(name: str) -> Callable[[str], list[str]]:
    if name == "wordpunct":
        return wordpunct_tokenize
    if name == "word_tokenize":
        try:
            from nltk import word_tokenize  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ConfigError(
                "tokenizer 'word_tokenize' needs nltk; install it or use `tokenizer: wordpunct`."
            ) from exc

        def tokenize(text: str) -> list[str]:
            try:
                return list(word_tokenize(text))
            except LookupError as exc:  # the punkt models are data, not code
                raise ConfigError(
                    "nltk's word_tokenize needs the 'punkt' data (`python -m nltk.downloader "
                    f"punkt punkt_tab`), or use `tokenizer: wordpunct`: {exc}"
                ) from exc

        return tokenize
    raise ConfigError(f"tokenizer must be 'wordpunct' or 'word_tokenize', got {name!r}.")


def hash_bucket(gram: str, num_buckets: int = 10000) -> int:
    """``int(sha256(utf8(gram)).hexdigest(), 16) mod num_buckets``.

    Example:
        >>> hash_bucket("the", 10000)
        8288
    """
    return int(hashlib.sha256(gram.encode("utf-8")).hexdigest(), 16) % num_buckets


def ngram_buckets(
    text: str,
    ngrams: int = 2,
    num_buckets: int = 10000,
    tokenizer: str = "wordpunct",
    cache: dict[str, int] | None = None,
) -> NDArray[np.int64]:
    """The bucket of every n-gram of ``text`` (``1 <= n <= ngrams``), unigrams first.

    Args:
        text: Raw text; lowercased before tokenising.
        ngrams: Largest n-gram order.
        num_buckets: Number of hash buckets.
        tokenizer: ``wordpunct`` or ``word_tokenize``.
        cache: Optional gram -> bucket memo shared across calls (the vocabulary repeats, and
            hashing dominates the cost). Only valid for one ``num_buckets``.
    """
    tokenize = _tokenizer(tokenizer)
    words = tokenize(text.lower())
    memo: dict[str, int] = {} if cache is None else cache
    out: list[int] = []
    for n in range(1, ngrams + 1):
        for i in range(len(words) - n + 1):
            gram = words[i] if n == 1 else " ".join(words[i : i + n])
            b = memo.get(gram)
            if b is None:
                b = memo[gram] = hash_bucket(gram, num_buckets)
            out.append(b)
    return np.asarray(out, dtype=np.int64)


def ngram_counts(
    text: str, ngrams: int = 2, num_buckets: int = 10000, tokenizer: str = "wordpunct"
) -> NDArray[np.int64]:
    """The hashed n-gram count vector of ``text`` (length ``num_buckets``)."""
    return np.bincount(ngram_buckets(text, ngrams, num_buckets, tokenizer), minlength=num_buckets)


def fit_bucket_distribution(
    texts: Iterable[str],
    ngrams: int = 2,
    num_buckets: int = 10000,
    tokenizer: str = "wordpunct",
    max_tokens: int | None = None,
    cache: dict[str, int] | None = None,
) -> NDArray[np.float64]:
    """Normalised hashed n-gram counts over ``texts`` (the official ``fit_bow``).

    Texts are counted in order until more than ``max_tokens`` grams have been counted (None:
    all texts). With no gram at all the distribution is uniform.
    """
    total = np.zeros(num_buckets, dtype=np.float64)
    counted = 0
    memo: dict[str, int] = {} if cache is None else cache
    for text in texts:
        b = ngram_buckets(text, ngrams, num_buckets, tokenizer, memo)
        total += np.bincount(b, minlength=num_buckets)
        counted += b.size
        if max_tokens is not None and counted > max_tokens:
            break
    s = total.sum()
    return total / s if s > 0 else np.full(num_buckets, 1.0 / num_buckets)


def dsir_log_ratio(p_target: ArrayLike, p_raw: ArrayLike) -> NDArray[np.float64]:
    """``log(p_t + 1e-8) - log(p_r + 1e-8)``, per bucket."""
    pt = np.asarray(p_target, dtype=np.float64)
    pr = np.asarray(p_raw, dtype=np.float64)
    if pt.shape != pr.shape or pt.ndim != 1:
        raise DataError(f"dsir: p_t {pt.shape} and p_r {pr.shape} must be vectors of one length.")
    return np.log(pt + _EPS) - np.log(pr + _EPS)


def dsir_log_weights(
    counts: ArrayLike, p_target: ArrayLike, p_raw: ArrayLike
) -> NDArray[np.float64] | float:
    """``log w = <counts, log(p_t + 1e-8) - log(p_r + 1e-8)>`` for one count vector or a matrix.

    Example (the spec's):
        >>> round(float(dsir_log_weights([2, 1, 0], [.5, .25, .25], [.25, .25, .5])), 6)
        1.386294
    """
    c = np.asarray(counts, dtype=np.float64)
    out = c @ dsir_log_ratio(p_target, p_raw)
    return float(out) if c.ndim == 1 else np.asarray(out, dtype=np.float64)


def dsir_scores(
    pool_texts: Sequence[str],
    target_texts: Sequence[str],
    *,
    ngrams: int = 2,
    num_buckets: int = 10000,
    tokenizer: str = "wordpunct",
    num_tokens_to_fit: int | None = None,
) -> NDArray[np.float64]:
    """``log w`` of every pool text against the target texts (spec §2.10 steps 1-3).

    ``p_t`` is fitted on all target texts, ``p_r`` on the pool (capped at ``num_tokens_to_fit``
    counted grams; None: no cap), both with the configured ``ngrams`` and ``num_buckets``.

    Raises:
        DataError: when the target set is empty.
    """
    if len(target_texts) == 0:
        raise DataError("dsir: the target set has no rows; give `target_dataset` some examples.")
    memo: dict[str, int] = {}
    p_t = fit_bucket_distribution(target_texts, ngrams, num_buckets, tokenizer, None, memo)
    p_r = fit_bucket_distribution(
        pool_texts, ngrams, num_buckets, tokenizer, num_tokens_to_fit, memo
    )
    ratio = dsir_log_ratio(p_t, p_r)
    out = np.empty(len(pool_texts), dtype=np.float64)
    for i, text in enumerate(pool_texts):
        out[i] = ratio[ngram_buckets(text, ngrams, num_buckets, tokenizer, memo)].sum()
    return out


def gumbel_top_k(log_weights: ArrayLike, n: int, seed: int) -> NDArray[np.int64]:
    """Gumbel-top-k on log weights: ``n`` largest ``log w_i + g_i`` (§0.3, in log space).

    The same draw as ``sample_without_replacement(exp(log w), n, seed)`` (identical Gumbel noise
    from ``Generator(PCG64(seed))``), without overflowing ``exp``. Non-finite log weights are
    never chosen.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    kappa = lw + generator(seed).gumbel(size=lw.size)
    return top_k(np.where(np.isfinite(lw), kappa, -np.inf), n)


def _text_rows(value: Any, rows: int, what: str) -> list[str]:
    texts = list(value)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"{what}: text row {i} is {type(t).__name__}, expected str.")
    if len(texts) != rows:  # pragma: no cover - signal_rows checks it first
        raise DataError(f"{what}: {len(texts)} texts, expected {rows}.")
    return texts


def _digest(x: NDArray[np.float64]) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype="<f8").tobytes()).hexdigest()


class DsirSelector(ScoredSelector):
    """DSIR importance resampling (spec §2.10) on the shared shell (§2.0).

    Signals (only until ``log w`` is cached): ``text`` (kind ``text``, all pool rows) and
    ``target_text`` (kind ``text``, split ``target``), both with option ``text_fields``. ``log w``
    is computed once for the whole pool and kept in memory; the state holds its sha256, and a
    resumed run, which recomputes it from the same texts, checks it. Unscored candidates
    (``candidate_subsample``, ``exclude_recent``) are simply left out of the draw. Windows use
    ``derive(seed, "dsir", epoch, step)``. ``last_scores`` holds the candidates' ``log w``.
    """

    config_class = DsirSelectorConfig
    name = "dsir"

    def __init__(
        self,
        config: DsirSelectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        self.config: DsirSelectorConfig
        self.log_weights: NDArray[np.float64] | None = None
        self._digest: str | None = None

    def _options(self) -> dict[str, Any]:
        fields = self.config.text_fields
        return {"text_fields": None if fields is None else list(fields)}

    def _signals(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> list[SignalRequest]:
        if self.log_weights is not None and self.log_weights.size == request.num_samples:
            return []
        opts = self._options()
        return [
            SignalRequest("text", "text", "train", None, opts),
            SignalRequest("target_text", "text", "target", None, opts),
        ]

    def compute(
        self, pool_texts: Sequence[str], target_texts: Sequence[str]
    ) -> NDArray[np.float64]:
        """Compute (or recompute) ``log w`` for the pool and cache it."""
        cfg = self.config
        lw = dsir_scores(
            pool_texts,
            target_texts,
            ngrams=cfg.ngrams,
            num_buckets=cfg.num_buckets,
            tokenizer=cfg.tokenizer,
            num_tokens_to_fit=cfg.tokens_to_fit,
        )
        digest = _digest(lw)
        if self._digest is not None and digest != self._digest:
            raise StateError(
                f"{self.what}: the importance weights recomputed on resume (sha256 {digest[:12]}) "
                f"differ from the saved ones ({self._digest[:12]}); the pool or target texts, or "
                "the config, changed since the checkpoint."
            )
        self.log_weights, self._digest = lw, digest
        return lw

    def _choose(
        self, request: SelectRequest, candidates: NDArray[np.int64], n: int
    ) -> NDArray[np.int64]:
        size = request.num_samples
        if self.log_weights is None or self.log_weights.size != size:
            pool = _text_rows(signal_rows(request, "text", size, self.what), size, self.what)
            target_value = request.extras.get("target_text")
            if target_value is not None and len(target_value) == 0:
                raise DataError(
                    f"{self.what}: the target set has no rows; give `target_dataset` some examples."
                )
            target_rows = len(target_value) if target_value is not None else 0
            target = _text_rows(
                signal_rows(request, "target_text", target_rows, self.what), target_rows, self.what
            )
            self.compute(pool, target)
        assert self.log_weights is not None
        lw = self.log_weights[candidates]
        self.last_scores = (candidates, lw)
        if self.config.top_k:
            return candidates[top_k(lw, n)]
        return candidates[
            gumbel_top_k(lw, n, derive(self.seed, "dsir", request.epoch, request.step))
        ]

    def _extra_state(self) -> dict[str, Any]:
        return {"log_weights_sha256": self._digest}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        digest = state.get("log_weights_sha256")
        if digest is not None and not isinstance(digest, str):
            raise StateError(f"{self.what}: malformed log_weights_sha256 {digest!r} in the state.")
        self._digest = digest
        self.log_weights = None
