"""Make a workload's prompts once the backend is up, with the target server's own tokenizer.

Lengths are exact where the server can count: the prose is tokenised once, windows of the drawn length
are cut from it (as text pieces where the server gives them, else through its ``/detokenize``), and each
prompt is counted again and trimmed until it holds the drawn number of tokens. What the server adds to a
prompt (a BOS token, the chat template and the system prompt) is measured apart, so a length can mean the
whole prompt at the server or the user's content alone. All of it happens before the clock starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agent.core.errors import BackendError, ConfigError
from agent.core.record import Turn
from agent.core.scenario import Scenario, builtin_corpus
from agent.core.workload import (
    DatasetWorkload,
    Lengths,
    SharedPrefixWorkload,
    SyntheticWorkload,
    WorkPrompt,
)

__all__ = ["Cutter", "make_prompts", "prepare_workloads"]

#: Prompts made at once; their counts go to the server together (one call per batch where it can).
CONCURRENT_COUNTS = 256
#: Special-token texts tried as the boundary between prompts counted in one call: tokenizers split text at
#: special tokens before anything else, so the pieces between them count as they would alone.
SEPARATORS = ("<bos>", "<s>", "<|endoftext|>", "</s>", "<eos>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>")
#: Windows a batched count is checked on, one by one, before it is trusted.
BATCH_CHECKS = 24
#: Tries to trim a cut window to the exact length after merges at its edges.
TRIM_TRIES = 4
#: Without a tokenizer, lengths are estimated at this many characters per token (and flagged so).
CHARS_PER_TOKEN = 4.0
#: A workload bound by time makes this many distinct prompts and cycles through them.
DEFAULT_PROMPTS = 1000


@runtime_checkable
class Codec(Protocol):
    """A tokenizer prompts can be cut with: the backend's own, or a local one."""

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens)."""

    async def detokenize(self, ids: list[int]) -> str:
        """Text of ``ids``."""


@runtime_checkable
class PieceCodec(Protocol):
    """A tokenizer that also gives each token's text, so windows are cut without asking the server."""

    async def token_pieces(self, text: str) -> list[tuple[int, str]] | None:
        """Ids and their texts (None when the server cannot give whole-text pieces)."""


@runtime_checkable
class PromptCounter(Protocol):
    """A server that counts a whole prompt as it would serve it: template and special tokens included."""

    async def count_prompt(
        self, *, text: str | None = None, messages: list[dict[str, str]] | None = None
    ) -> int | None:
        """Tokens of the prompt at the server, or None when it cannot say."""


class LocalTokenizer:
    """A ``tokenizer.json`` on disk (``tokenizers``), for servers that have no ``/tokenize``."""

    def __init__(self, path: Path) -> None:
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(f"tokenizer {file} not found; give a tokenizer.json or the folder holding one")
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception for a broken file
            raise ConfigError(f"tokenizer {file} could not be read: {e}") from e

    async def tokenize(self, text: str) -> list[int]:
        """Ids without special tokens."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    async def detokenize(self, ids: list[int]) -> str:
        """Text of ids."""
        return str(self._tok.decode(ids, skip_special_tokens=False))


@dataclass(slots=True)
class Cutter:
    """Cuts texts of exact token lengths out of a corpus with one tokenizer."""

    corpus: str
    codec: Codec | None
    ids: list[int] = field(default_factory=list)
    pieces: list[str] | None = None
    #: prompts whose count came out exact, and off by how much when not
    exact: int = 0
    off: dict[int, int] = field(default_factory=dict)
    #: counts a text as the server will see it inside its chat template (the template's own tokens taken
    #: off), where tokens can merge across the template's edges; None: the text alone is counted
    in_context: Callable[[str], Awaitable[int | None]] | None = None
    #: counts many cut texts in one call of the server, where that was found to agree with counting alone
    batch: BatchCounter | None = None

    async def prepare(self) -> None:
        """Tokenise the corpus once (with each token's text where the codec gives it)."""
        if self.codec is None:
            return
        if isinstance(self.codec, PieceCodec):
            got = await self.codec.token_pieces(self.corpus)
            if got:
                self.ids = [t for t, _ in got]
                self.pieces = [p for _, p in got]
                return
        self.ids = await self.codec.tokenize(self.corpus)
        if not self.ids:
            raise ConfigError("the corpus has no tokens")

    @property
    def counted(self) -> bool:
        """True when lengths come from a real tokenizer, not an estimate."""
        return bool(self.ids)

    def window(self, n: int, start: int) -> list[int]:
        """``n`` ids from ``start``, wrapping round the corpus."""
        size = len(self.ids)
        start %= size
        out = self.ids[start : start + n]
        while len(out) < n:
            out += self.ids[: n - len(out)]
        return out

    async def decode(self, ids: list[int], start: int | None = None) -> str:
        """Text of ids (locally from the pieces of a window at ``start``, else through the codec)."""
        assert self.codec is not None
        if self.pieces is not None and start is not None:
            size = len(self.pieces)
            return "".join(self.pieces[(start + i) % size] for i in range(len(ids)))
        return await self.codec.detokenize(ids)

    async def count(self, text: str) -> int | None:
        """Tokens of ``text`` (no special tokens), or None without a tokenizer."""
        if self.codec is None or not self.ids:
            return None
        return len(await self.codec.tokenize(text))

    async def count_cut(self, text: str) -> int | None:
        """Tokens a cut text adds where it will be sent: in its chat template when that can be counted."""
        if self.batch is not None:
            return await self.batch.count(text)
        return await self.count_alone(text)

    async def count_alone(self, text: str) -> int | None:
        """``count_cut`` with one call of its own."""
        if self.in_context is not None:
            got = await self.in_context(text)
            if got is not None:
                return got
        return await self.count(text)

    async def cut(self, n: int, start: int, head: tuple[int, int] | None = None) -> str:
        """Text of exactly ``n`` tokens when the tokenizer allows; ``head`` (start, length) is cut first.

        Tokens can merge where a window is cut, so the text is counted again and the window trimmed or
        grown until it counts ``n`` (a few tries; what is left over is counted in ``off``).
        """
        if not self.counted:
            chars = max(1, round(n * CHARS_PER_TOKEN))
            return "".join(self.corpus[(start * 7 + i) % len(self.corpus)] for i in range(chars))
        head_n = head[1] if head else 0
        want = n
        text = ""
        got: int | None = None
        for _ in range(TRIM_TRIES):
            text = await self._text(head, max(0, want - head_n), start)
            got = await self.count_cut(text)
            assert got is not None
            if got == n:
                self.exact += 1
                return text
            want = max(head_n + 1, want + (n - got))
        diff = (got or 0) - n
        self.off[diff] = self.off.get(diff, 0) + 1
        return text

    async def _text(self, head: tuple[int, int] | None, n: int, start: int) -> str:
        """The head window's text, then ``n`` tokens' text from ``start``."""
        if head is None:
            return await self.decode(self.window(n, start), start)
        if self.pieces is not None:
            return await self.decode(self.window(head[1], head[0]), head[0]) + await self.decode(
                self.window(n, start), start
            )
        return await self.decode(self.window(head[1], head[0]) + self.window(n, start))


@dataclass(slots=True)
class BatchCounter:
    """Counts the texts of concurrent cuts in one ``/tokenize`` call, joined at a special token.

    ``lead`` and ``trail`` are the template text around the user's content (chat), so merges at its
    edges count as they will at the server; their own tokens are taken off.
    """

    codec: Codec
    sep: str
    sep_id: int
    lead: str = ""
    trail: str = ""
    base: int = 0
    calls: int = 0
    _pending: list[tuple[str, asyncio.Future[int | None]]] = field(default_factory=list)
    _scheduled: bool = False

    async def count(self, text: str) -> int | None:
        """The text's count, from the next batch."""
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await future

    async def count_now(self, texts: list[str]) -> list[int] | None:
        """Counts of ``texts`` in one call, or None when the answer cannot be split back into them."""
        joined = self.sep.join(self.lead + t + self.trail for t in texts)
        ids = await self.codec.tokenize(joined)
        self.calls += 1
        parts: list[int] = [0]
        for t in ids:
            if t == self.sep_id:
                parts.append(0)
            else:
                parts[-1] += 1
        if len(parts) != len(texts):
            return None
        return [n - self.base for n in parts]

    async def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        try:
            counts = await self.count_now([t for t, _ in pending])
        except Exception as e:  # noqa: BLE001 - every waiting cut gets the failure, none hangs
            for _, future in pending:
                future.set_exception(e)
            return
        for i, (_, future) in enumerate(pending):
            future.set_result(counts[i] if counts is not None else None)


async def _separator(codec: Codec) -> tuple[str, int] | None:
    """A special token the tokenizer splits text at (so pieces between count as they would alone)."""
    a, b = await codec.tokenize("alpha beta"), await codec.tokenize(" gamma")
    for sep in SEPARATORS:
        ids = await codec.tokenize(sep)
        if len(ids) == 1 and await codec.tokenize(f"alpha beta{sep} gamma") == [*a, ids[0], *b]:
            return sep, ids[0]
    return None


async def enable_batches(cutter: Cutter, render: Callable[[str], Awaitable[str | None]] | None) -> bool:
    """Count cuts in batches when a separator exists and batched counts agree with one-by-one counts."""
    codec = cutter.codec
    if codec is None or not cutter.counted:
        return False
    found = await _separator(codec)
    if found is None:
        return False
    counter = BatchCounter(codec, *found)
    if cutter.in_context is not None:  # chat: the template's text around the content, from the server
        probe = "QZXPROBE"
        rendered = await render(probe) if render is not None else None
        if rendered is None or probe not in rendered:
            return False
        i = rendered.index(probe)
        counter.lead, counter.trail = (
            rendered[max(0, i - 24) : i],
            rendered[i + len(probe) : i + len(probe) + 24],
        )
        counter.base = len(await codec.tokenize(counter.lead + counter.trail))
    windows = [await cutter.decode(cutter.window(17 + 13 * k, 97 * k), 97 * k) for k in range(BATCH_CHECKS)]
    together = await counter.count_now(windows)
    alone = [await cutter.count_alone(w) for w in windows]
    if together != alone:
        return False
    cutter.batch = counter
    return True


async def _bounded(jobs: Iterable[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the jobs ``CONCURRENT_COUNTS`` at a time, results in order.

    A fixed set of workers takes the jobs one after another, so a hundred thousand prompts never mean a
    hundred thousand tasks alive at once.
    """
    todo = list(jobs)
    results: list[Any] = [None] * len(todo)
    queue = iter(enumerate(todo))

    async def worker() -> None:
        for i, job in queue:  # one shared iterator: each job is taken by exactly one worker
            results[i] = await job()

    await asyncio.gather(*(worker() for _ in range(min(CONCURRENT_COUNTS, len(todo)))))
    return results


@runtime_checkable
class PromptRenderer(Protocol):
    """A server that shows a chat prompt as its template renders it (llama.cpp's ``/apply-template``)."""

    async def render_prompt(self, messages: list[dict[str, str]]) -> str | None:
        """The prompt text the template makes of ``messages``, or None."""


def _messages(text: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": text}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


async def _use_template(backend: Any, cutter: Cutter, system: str | None, overhead: int | None) -> None:
    """Count chat content inside the server's template (where it can say), in batches where they agree."""
    if overhead is not None:
        cutter.in_context = _in_template(backend, system, overhead)
    render: Callable[[str], Awaitable[str | None]] | None = None
    if isinstance(backend, PromptRenderer):

        async def render(text: str) -> str | None:
            return await backend.render_prompt(_messages(text, system))

    cutter.batch = None
    await enable_batches(cutter, render)


def _in_template(backend: Any, system: str | None, overhead: int) -> Callable[[str], Awaitable[int | None]]:
    """Counts user content as the server's chat template holds it, less the template's own tokens."""

    async def count(text: str) -> int | None:
        whole = await backend.count_prompt(messages=_messages(text, system))
        return None if whole is None else whole - overhead

    return count


async def _overhead(backend: Any, cutter: Cutter, sc: Scenario, system: str | None) -> int | None:
    """Tokens the server adds around the user's content: BOS, the chat template, the system prompt."""
    if not isinstance(backend, PromptCounter) or not cutter.counted:
        return None
    probe = "Hello"
    content = await cutter.count(probe)
    if sc.endpoint == "completions":
        whole = await backend.count_prompt(text=probe)
    else:
        messages = [{"role": "user", "content": probe}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        whole = await backend.count_prompt(messages=messages)
    if whole is None or content is None:
        return None
    return max(0, whole - content)


def _outputs(lengths: Lengths | None, rng: random.Random, n: int) -> list[int | None]:
    return list(lengths.draw(rng, n)) if lengths is not None else [None] * n


def _count_wanted(sc: Scenario, explicit: int | None) -> int:
    if explicit is not None:
        return explicit
    if sc.requests is None:
        return DEFAULT_PROMPTS
    return min(sc.requests + sc.warmup, 1_000_000)


async def _synthetic(
    wl: SyntheticWorkload, sc: Scenario, cutter: Cutter, overhead: int | None
) -> list[WorkPrompt]:
    count = _count_wanted(sc, wl.prompts)
    rng = random.Random(wl.seed)
    inputs = wl.input_tokens.draw(rng, count)
    outputs = _outputs(wl.output_tokens, rng, count)
    span = max(1, len(cutter.ids) or len(cutter.corpus))
    starts = [rng.randrange(span) for _ in range(count)]
    minus = overhead if wl.length_of == "prompt" and overhead is not None else 0

    def job(i: int) -> Callable[[], Awaitable[WorkPrompt]]:
        async def make() -> WorkPrompt:
            text = await cutter.cut(max(1, inputs[i] - minus), int(starts[i]))
            return WorkPrompt(
                f"{sc.name}-{i:06d}",
                text,
                max_tokens=outputs[i],
                prompt_tokens=inputs[i] if minus or overhead is None else inputs[i] + overhead,
                template_tokens=overhead,
            )

        return make

    return await _bounded(job(i) for i in range(count))


async def _shared_prefix(
    wl: SharedPrefixWorkload, sc: Scenario, cutter: Cutter, backend: Any, overhead: int | None
) -> list[WorkPrompt]:
    rng = random.Random(wl.seed)
    span = max(1, len(cutter.ids) or len(cutter.corpus))
    group_starts = [rng.randrange(span) for _ in range(wl.groups)]
    total = wl.groups * wl.prompts_per_group
    suffixes = wl.suffix_tokens.draw(rng, total)
    outputs = _outputs(wl.output_tokens, rng, total)
    starts = [rng.randrange(span) for _ in range(total)]
    system = await cutter.cut(wl.system_tokens, rng.randrange(span)) if wl.system_tokens else None
    chat = sc.endpoint == "chat"
    if system and chat:  # the shared system prompt is part of what the template wraps
        overhead = await _overhead(backend, cutter, sc, system)
        await _use_template(backend, cutter, system, overhead)
    order = (
        [(g, j) for j in range(wl.prompts_per_group) for g in range(wl.groups)]
        if wl.order == "interleaved"
        else [(g, j) for g in range(wl.groups) for j in range(wl.prompts_per_group)]
    )
    prefix_texts = (
        [] if cutter.counted else [await cutter.cut(wl.prefix_tokens, int(s)) for s in group_starts]
    )

    def job(k: int, g: int, j: int) -> Callable[[], Awaitable[WorkPrompt]]:
        i = g * wl.prompts_per_group + j

        async def make() -> WorkPrompt:
            n = wl.prefix_tokens + suffixes[i]
            if cutter.counted:
                text = await cutter.cut(n, int(starts[i]), head=(int(group_starts[g]), wl.prefix_tokens))
            else:
                text = prefix_texts[g] + await cutter.cut(suffixes[i], int(starts[i]))
            if system and not chat:
                text = system + text
            whole = n + (wl.system_tokens if not chat else 0) + (overhead or 0)
            return WorkPrompt(
                f"{sc.name}-g{g:03d}-{j:04d}",
                text,
                system=system if chat else None,
                max_tokens=outputs[i],
                prompt_tokens=whole,
                template_tokens=overhead,
                group=f"g{g:03d}",
            )

        return make

    return await _bounded(job(k, g, j) for k, (g, j) in enumerate(order))


@dataclass(slots=True)
class _DatasetPrompts:
    """Prompts from a dataset's conversations, their lengths counted with the server's tokenizer."""

    wl: DatasetWorkload
    sc: Scenario
    cutter: Cutter
    backend: Any
    overheads: dict[str | None, int | None] = field(default_factory=dict)

    async def length(self, text: str | None) -> int | None:
        """Tokens of ``text`` at the server (an estimate without a tokenizer)."""
        if text is None:
            return None
        got = await self.cutter.count(text)
        return got if got is not None else max(1, round(len(text) / CHARS_PER_TOKEN))

    async def answer_len(self, turn: Turn, rng: random.Random) -> int | None:
        """The output length to ask of one turn: drawn, the scenario's, or the dataset's answer length."""
        if isinstance(self.wl.output_tokens, Lengths):
            return self.wl.output_tokens.draw(rng, 1)[0]
        if self.wl.output_tokens == "scenario":
            return None
        return turn.output_tokens or await self.length(turn.answer)

    async def later_turns(self, turns: tuple[Turn, ...], rng: random.Random) -> tuple[Turn, ...]:
        """A conversation's turns after the first, each with its output length and think time."""
        think = self.wl.think_time
        return tuple(
            [
                replace(
                    t,
                    output_tokens=await self.answer_len(t, rng),
                    think_s=t.think_s if t.think_s is not None else think,
                )
                for t in turns
            ]
        )

    async def one(self, index: int) -> WorkPrompt | None:
        """The prompt of conversation ``index``, or None when a length filter leaves it out."""
        wl, conv = self.wl, self.wl.data.conversations[index]
        rng = random.Random(f"{wl.seed}/{index}")  # its own draws, whatever order prompts are made in
        first = conv.turns[0]
        p_len, o_len = await self.length(first.text), await self.answer_len(first, rng)
        if not _within(p_len, wl.min_prompt_tokens, wl.max_prompt_tokens) or not _within(
            o_len, wl.min_output_tokens, wl.max_output_tokens
        ):
            return None
        turns = await self.later_turns(conv.turns[1:], rng) if wl.turns == "all" else ()
        system = conv.system if conv.system is not None else self.sc.system
        if system not in self.overheads:
            self.overheads[system] = await _overhead(self.backend, self.cutter, self.sc, system)
        extra = self.overheads[system]
        whole = p_len + extra if p_len is not None and extra is not None and self.cutter.counted else None
        return WorkPrompt(
            conv.id,
            first.text,
            system=conv.system,
            max_tokens=o_len,
            prompt_tokens=whole,
            template_tokens=extra,
            turns=turns,
            answer=first.answer,
        )


async def _dataset(wl: DatasetWorkload, sc: Scenario, cutter: Cutter, backend: Any) -> list[WorkPrompt]:
    data = wl.data
    rng = random.Random(wl.seed)
    indices = list(range(len(data.conversations)))
    if wl.sample:
        rng.shuffle(indices)
    want = wl.sample or len(indices)
    maker = _DatasetPrompts(wl, sc, cutter, backend)
    out: list[WorkPrompt] = []
    for lo in range(0, len(indices), 256):
        batch = [int(i) for i in indices[lo : lo + 256]]
        made = await _bounded(functools.partial(maker.one, i) for i in batch)
        out += [m for m in made if m is not None]
        if len(out) >= want:
            break
    if not out:
        raise ConfigError("no conversation of the dataset passes the length filters", location=str(data.path))
    seen: dict[str, int] = {}
    unique: list[WorkPrompt] = []
    for p in out[:want]:  # ids repeat in some datasets: each prompt keeps its own
        n = seen[p.id] = seen.get(p.id, -1) + 1
        unique.append(p if n == 0 else replace(p, id=f"{p.id}#{n}"))
    return unique


def _within(value: int | None, lo: int | None, hi: int | None) -> bool:
    if value is None:
        return True
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _codec(wl: Any, backend: Any) -> Codec | None:
    if wl.tokenizer:
        return LocalTokenizer(Path(wl.tokenizer).expanduser())
    return backend if isinstance(backend, Codec) else None


async def make_prompts(sc: Scenario, backend: Any) -> dict[str, object]:
    """Make ``sc``'s workload prompts with the backend's tokenizer; the facts the manifest keeps."""
    wl = sc.workload
    assert wl is not None
    t0 = time.perf_counter()
    corpus = builtin_corpus() if wl.corpus is None else await asyncio.to_thread(_read_corpus, Path(wl.corpus))
    cutter = Cutter(corpus, _codec(wl, backend))
    try:
        await cutter.prepare()
        overhead = await _overhead(backend, cutter, sc, sc.system)
        if sc.endpoint == "chat":
            await _use_template(backend, cutter, sc.system, overhead)
        else:
            await enable_batches(cutter, None)
        if isinstance(wl, SyntheticWorkload):
            made = await _synthetic(wl, sc, cutter, overhead)
        elif isinstance(wl, SharedPrefixWorkload):
            made = await _shared_prefix(wl, sc, cutter, backend, overhead)
        else:
            made = await _dataset(wl, sc, cutter, backend)
    except BackendError as e:
        raise ConfigError(f"the workload's prompts could not be made with the server's tokenizer: {e}") from e
    sc.use_prompts(made)
    return _facts(sc, wl, cutter, overhead, made, time.perf_counter() - t0)


def _facts(
    sc: Scenario, wl: Any, cutter: Cutter, overhead: int | None, made: list[WorkPrompt], took: float
) -> dict[str, object]:
    facts: dict[str, object] = {
        "kind": wl.kind,
        "prompts": len(made),
        "turns": sum(1 + len(p.turns) for p in made),
        "lengths": ("local tokenizer" if wl.tokenizer else "server tokenizer")
        if cutter.counted
        else "estimated",
        "template_tokens": overhead,
        "made_s": round(took, 3),
    }
    if cutter.counted and not isinstance(wl, DatasetWorkload):
        facts["counted"] = "in batches" if cutter.batch is not None else "one by one"
        facts["exact"] = cutter.exact
        facts["off_by"] = {str(k): v for k, v in sorted(cutter.off.items())}
    if isinstance(wl, SyntheticWorkload):
        facts["input_tokens"] = wl.input_tokens.label()
        facts["length_of"] = wl.length_of
    if isinstance(wl, SharedPrefixWorkload):
        facts.update(
            groups=wl.groups,
            prefix_tokens=wl.prefix_tokens,
            suffix_tokens=wl.suffix_tokens.label(),
            order=wl.order,
        )
    if getattr(wl, "output_tokens", None) is not None and isinstance(wl.output_tokens, Lengths):
        facts["output_tokens"] = wl.output_tokens.label()
    if isinstance(wl, DatasetWorkload):
        facts["dataset"] = wl.data.identity()
        facts["turns_mode"] = wl.turns
    return facts


def _read_corpus(path: Path) -> str:
    path = path.expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"corpus {path} is not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise ConfigError(f"corpus {path}: {e.strerror or e}") from e
    if not text.strip():
        raise ConfigError(f"corpus {path} is empty")
    return text


async def prepare_workloads(scenarios: Iterable[Scenario], backend: Any) -> dict[str, dict[str, object]]:
    """Make every scenario's workload prompts (identical workloads once); facts by scenario name."""
    facts: dict[str, dict[str, object]] = {}
    done: dict[str, tuple[list[WorkPrompt], dict[str, object]]] = {}
    for sc in scenarios:
        if sc.workload is None or sc.made is not None:
            continue
        key = repr((sc.name, sc.workload.model_dump(), sc.endpoint, sc.system, sc.requests, sc.warmup))
        if key in done:
            sc.use_prompts(done[key][0])
        else:
            got = await make_prompts(sc, backend)
            assert sc.made is not None
            done[key] = (sc.made, got)
        facts[sc.name] = done[key][1]
    if done:
        _give_back_memory()
    return facts


def _give_back_memory() -> None:
    """Return the heap that making prompts used for a while (corpus tokens, large responses) to the system.

    Without it the load runs with those pages still resident: a few MB of a client's footprint.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc only; elsewhere nothing to do
