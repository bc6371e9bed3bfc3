"""A chat corpus for SAE training: generated instructions answered by the model's own samples.

Steering analyses run on chat-formatted prompts and the model's replies, so an SAE meant for them
should be trained on that distribution. With no dataset hub, we make the instructions ourselves:
a fixed generator crosses task templates (explain, summarise, list, compare, write a poem, give
advice, translate, ...) with topics (science, cooking, history, sport, ...) and optional
constraints (length, audience, format), and draws them in a seeded order without repeats, so the
first n instructions are the same for every n (prefix-stable). An instruction is held out when a
hash of its text falls in 1/`HELDOUT_MOD` of the range, so the train and held-out splits never
share an instruction whatever n is. Each instruction, with the default system prompt most of the
time and one of a few varied system prompts otherwise, is formatted with the model's chat template
(a plain "User:/Assistant:" format for models without one) and answered by the model itself,
sampled at a temperature, batched and KV-cached: through Hugging Face `generate` on the
dequantized weights steerlens runs (`backend.loading.cached_hf_export`; about 3x faster on CPU)
or through `steerlens.generate`. Replies are cached in shards of `shard_size` conversations,
each written atomically and seeded by (seed, shard index), so a rerun skips finished shards and
reproduces unfinished ones; `ChatProvenance` records the generator version, seed, sampler,
counts, tokens and wall time beside them.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..backend import Model, runtime
from ..backend.loading import cache_root
from ..io import atomic_write_text

CHAT_VERSION = 1
HELDOUT_MOD = 40
SAMPLERS = ("hf", "steerlens")
SPLITS = ("train", "heldout")

TOPICS = (
    "photosynthesis", "black holes", "the water cycle", "volcanoes", "earthquakes", "climate change",
    "the human heart", "vaccines", "sleep", "nutrition", "the immune system", "DNA", "evolution",
    "gravity", "electricity", "magnets", "the moon", "Mars", "the solar system", "rainbows",
    "the French Revolution", "the Roman Empire", "ancient Egypt", "the printing press",
    "the industrial revolution", "the Silk Road", "the Renaissance", "the Cold War",
    "the invention of the telephone", "the history of aviation", "medieval castles", "the Vikings",
    "baking bread", "making pasta", "brewing coffee", "growing tomatoes", "composting",
    "houseplants", "keeping chickens", "cooking rice", "vegetarian diets", "spices",
    "running a marathon", "learning to swim", "yoga", "chess", "football", "tennis", "cycling",
    "hiking safely", "camping", "rock climbing", "budgeting", "saving for retirement",
    "credit cards", "starting a small business", "job interviews", "writing a resume",
    "public speaking", "time management", "procrastination", "remote work", "teamwork",
    "negotiation", "learning a language", "studying for exams", "reading habits",
    "the internet", "computer viruses", "password security", "artificial intelligence",
    "smartphones", "social media", "video games", "electric cars", "solar power", "wind farms",
    "recycling", "plastic pollution", "coral reefs", "rainforests", "bees", "whales", "dogs",
    "cats", "birds migrating", "dinosaurs", "the ocean", "deserts", "mountains", "rivers",
    "cities", "public transport", "architecture", "painting", "jazz music", "classical music",
    "learning the guitar", "photography", "film making", "poetry", "novels", "theatre",
    "friendship", "kindness", "moving to a new city", "parenting", "grandparents", "weddings",
    "birthdays", "holidays abroad", "travelling by train", "packing a suitcase", "Japan",
    "Italy", "Brazil", "Canada", "Kenya", "India", "mathematics", "prime numbers", "probability",
    "statistics", "geometry", "fractions", "the stock market", "inflation", "taxes", "democracy",
    "elections", "human rights", "philosophy", "happiness", "stress", "meditation", "exercise",
    "first aid", "the common cold", "drinking water", "robots", "space travel", "satellites",
    "the weather", "snow", "thunderstorms", "autumn", "gardening", "bicycles repair",
    "cleaning the house", "decluttering", "writing letters", "email etiquette", "libraries",
    "museums", "volunteering", "pets", "fishing", "sailing", "knitting", "origami",
)

TASKS = (
    ("explain", ("Explain {t} in simple terms.", "Can you explain how {t} works?",
                 "What should everyone know about {t}?", "Give me a short explanation of {t}.")),
    ("eli5", ("Explain {t} to a five-year-old.", "How would you describe {t} to a child?")),
    ("list", ("List five interesting facts about {t}.", "Give me three tips about {t}.",
              "What are the main things to know about {t}? Use a list.",
              "Name some common mistakes people make with {t}.")),
    ("howto", ("How do I get started with {t}?", "What is a good first step to learn about {t}?",
               "Give me step-by-step advice on {t}.")),
    ("opinion", ("What do you think about {t}?", "Is {t} overrated? Give a balanced answer.",
                 "Why do people care about {t}?")),
    ("compare", ("Compare {t} and {u}.", "What do {t} and {u} have in common?",
                 "How is {t} different from {u}?")),
    ("story", ("Write a short story about {t}.", "Tell me a bedtime story involving {t}.",
               "Write a very short story where {t} plays a role.")),
    ("poem", ("Write a short poem about {t}.", "Write a haiku about {t}.",
              "Write a limerick about {t}.")),
    ("summary", ("Summarize what is known about {t} in a paragraph.",
                 "Give me a one-paragraph overview of {t}.")),
    ("history", ("What is the history of {t}?", "How has {t} changed over time?")),
    ("pros_cons", ("What are the pros and cons of {t}?", "List advantages and disadvantages of {t}.")),
    ("question", ("Ask me three quiz questions about {t}.", "What is a common question about {t}, "
                  "and its answer?")),
    ("email", ("Write a short email to a friend about {t}.",
               "Draft a polite message inviting a colleague to a talk on {t}.")),
    ("formal", ("Write a formal paragraph about {t}.", "Describe {t} in a professional tone.")),
    ("casual", ("Tell me about {t} like you're chatting with a friend.",
                "Say something fun about {t}.")),
    ("advice", ("My friend is worried about {t}. What should I tell them?",
                "I want to get better at {t}. Any advice?", "I feel bored by {t}. Convince me it is "
                "interesting.")),
    ("define", ("Define {t} in one sentence.", "What does the word '{t}' mean?")),
    ("translate", ("How would you say 'I like {t}' in French?",
                   "Translate into Spanish: 'Tell me more about {t}.'")),
    ("plan", ("Make a one-week plan to learn about {t}.", "Plan a school lesson about {t}.")),
    ("debate", ("Give one argument for and one against {t}.",
                "Write the opening line of a debate speech about {t}.")),
    ("review", ("Write a short review of a book about {t}.",
                "Write a product description for something related to {t}.")),
    ("joke", ("Tell me a joke about {t}.", "Write a funny sentence about {t}.")),
    ("feelings", ("How might someone feel about {t}?", "Write a sad paragraph about {t}.",
                  "Write a cheerful paragraph about {t}.", "Write an angry complaint about {t}.")),
)

CONSTRAINTS = (
    "", "", "", " Keep it short.", " Use no more than three sentences.", " Use simple words.",
    " Answer in a friendly tone.", " Be precise.", " Use bullet points.", " Please be brief.",
    " Include an example.", " Write for a teenager.", " Write for an expert.",
)

SYSTEM_PROMPTS = (
    "You are a concise assistant.", "You are a friendly teacher who explains things clearly.",
    "You are a helpful assistant. Answer carefully.", "You are a creative writer.",
    "You are an expert who gives practical advice.",
)
DEFAULT_SYSTEM_SHARE = 0.7  # the rest get one of SYSTEM_PROMPTS


@dataclass(frozen=True)
class ChatItem:
    """One generated instruction.

    Attributes:
        index: its position in the split's sequence.
        task: the task type (first element of a `TASKS` entry).
        topic: the main topic.
        system: the system prompt, or None for the chat template's default.
        instruction: the user message.
    """

    index: int
    task: str
    topic: str
    system: str | None
    instruction: str


def is_heldout(instruction: str) -> bool:
    """Whether an instruction belongs to the held-out split (a hash of its text, 1/HELDOUT_MOD).

    Args:
        instruction: the user message.

    Returns:
        True for held-out instructions.
    """
    h = hashlib.blake2b(instruction.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % HELDOUT_MOD == 0


def n_distinct_instructions() -> int:
    """How many distinct instructions the generator can make (before the split).

    Returns:
        The number of distinct (template, topic, second topic, constraint) strings.
    """
    n = 0
    for _, temps in TASKS:
        for tpl in temps:
            pairs = len(TOPICS) * (len(TOPICS) - 1) if "{u}" in tpl else len(TOPICS)
            n += pairs
    return n * len(set(CONSTRAINTS))


def instructions(n: int, seed: int = 0, split: str = "train") -> list[ChatItem]:
    """The first `n` instructions of a split, drawn without repeats in a seeded order.

    Prefix-stable: `instructions(m)[:n] == instructions(n)` for m >= n.

    Args:
        n: how many (>= 0).
        seed: the drawing seed.
        split: "train" or "heldout" (disjoint by `is_heldout`).

    Returns:
        The items, `index` 0..n-1.

    Raises:
        ValueError: for an unknown split or n out of range.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits are {list(SPLITS)}.")
    if n < 0 or n > 100_000:
        raise ValueError(f"n must be in [0, 100000], got {n}.")
    rng = random.Random(f"steerlens-chat-{CHAT_VERSION}-{seed}")
    seen: set[str] = set()
    out: list[ChatItem] = []
    while len(out) < n:
        task, temps = TASKS[rng.randrange(len(TASKS))]
        tpl = temps[rng.randrange(len(temps))]
        t = TOPICS[rng.randrange(len(TOPICS))]
        u = TOPICS[rng.randrange(len(TOPICS))]
        cons = CONSTRAINTS[rng.randrange(len(CONSTRAINTS))]
        sys_draw = rng.random()
        sys_idx = rng.randrange(len(SYSTEM_PROMPTS))
        if "{u}" in tpl and u == t:
            continue
        text = tpl.format(t=t, u=u) + cons
        if text in seen:
            continue
        seen.add(text)
        if is_heldout(text) != (split == "heldout"):
            continue
        system = None if sys_draw < DEFAULT_SYSTEM_SHARE else SYSTEM_PROMPTS[sys_idx]
        out.append(ChatItem(len(out), task, t, system, text))
    return out


def render_prompt(model: Model, item: ChatItem) -> str:
    """The chat-formatted prompt text of an item, ending where the assistant's reply starts.

    Args:
        model (Model): its tokenizer's chat template formats the prompt (a plain
            "User: ...\\nAssistant:" format when it has none).
        item: the instruction.

    Returns:
        The prompt text (special tokens written out, as the template makes them).
    """
    tok = runtime.tokenizer(model)
    if runtime.has_chat_template(model):
        msgs = ([] if item.system is None else [{"role": "system", "content": item.system}])
        msgs.append({"role": "user", "content": item.instruction})
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    sys_line = "" if item.system is None else f"System: {item.system}\n"
    return f"{sys_line}User: {item.instruction}\nAssistant:"


def end_of_turn(model: Model) -> str:
    """The text that closes an assistant turn (the tokenizer's EOS token, e.g. `<|im_end|>`).

    Args:
        model (Model): the model.

    Returns:
        The end-of-turn text ("" when the tokenizer has no EOS token).
    """
    return runtime.tokenizer(model).eos_token or ""


@dataclass(frozen=True)
class ChatSampleConfig:
    """How replies are sampled.

    Attributes:
        temperature: sampling temperature (> 0).
        top_p: nucleus mass in (0, 1].
        max_new_tokens: most reply tokens.
        batch_size: prompts per generate call.
        shard_size: conversations per shard file (a multiple of batch_size is fastest).
        seed: seed of the instruction order and of sampling (shard i samples with seed + i).
        sampler: "hf" (Hugging Face generate on the same weights) or "steerlens".
        autocast_bf16: sample under bfloat16 autocast (matmuls in bf16; fast on CPUs with AMX).

    Raises:
        ValueError: for values out of range or an unknown sampler.
    """

    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 160
    batch_size: int = 32
    shard_size: int = 64
    seed: int = 0
    sampler: str = "hf"
    autocast_bf16: bool = False

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {self.sampler!r}; valid samplers are {list(SAMPLERS)}.")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be > 0 and top_p in (0, 1]; got {self.temperature}, "
                             f"{self.top_p}.")
        for name in ("max_new_tokens", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")


@dataclass(frozen=True)
class Conversation:
    """One instruction with the model's sampled reply.

    Attributes:
        item: the instruction.
        prompt: the rendered prompt text.
        reply: the sampled reply text (special tokens removed).
        prompt_tokens: tokens in the prompt.
        reply_tokens: tokens sampled (the end-of-turn token included when it was sampled).
        finished: whether the reply ended with the end-of-turn token before max_new_tokens.
    """

    item: ChatItem
    prompt: str
    reply: str
    prompt_tokens: int
    reply_tokens: int
    finished: bool

    def text(self, eot: str) -> str:
        """Prompt plus reply, closed by `eot` when the reply finished.

        Args:
            eot: the end-of-turn text (`end_of_turn(model)`).

        Returns:
            The conversation text.
        """
        return self.prompt + self.reply + (eot if self.finished else "")


@dataclass(frozen=True)
class ChatProvenance:
    """Where a chat corpus came from.

    Attributes:
        version: `CHAT_VERSION`.
        model: the model that wrote the replies.
        split: "train" or "heldout".
        config: the `ChatSampleConfig` as a dict.
        sampler_detail: what ran the sampling (library and version).
        n_conversations: conversations.
        n_distinct_instructions: distinct instructions among them.
        n_prompt_tokens: prompt tokens in all.
        n_reply_tokens: reply tokens in all.
        n_finished: replies that ended before max_new_tokens.
        n_shards: shard files.
        wall_seconds: sampling time summed over shards (each measured when it was made).
        tasks: conversations per task type.
        heldout_rule: how the held-out split is chosen.
    """

    version: int
    model: str
    split: str
    config: dict
    sampler_detail: str
    n_conversations: int
    n_distinct_instructions: int
    n_prompt_tokens: int
    n_reply_tokens: int
    n_finished: int
    n_shards: int
    wall_seconds: float
    tasks: dict
    heldout_rule: str

    def to_dict(self) -> dict:
        """The provenance as a JSON-ready dict.

        Returns:
            Every field.
        """
        return asdict(self)


@dataclass(frozen=True)
class ChatCorpus:
    """Sampled conversations plus provenance.

    Attributes:
        conversations: in instruction order.
        provenance: how they were made.
        eot: the end-of-turn text closing finished replies.
        path: the shard directory.
    """

    conversations: tuple[Conversation, ...]
    provenance: ChatProvenance
    eot: str
    path: Path

    def texts(self) -> list[str]:
        """Prompt + reply of every conversation.

        Returns:
            One string per conversation.
        """
        return [c.text(self.eot) for c in self.conversations]


def _sampler_detail(sampler: str) -> str:
    import transformers

    if sampler == "hf":
        return (f"transformers {transformers.__version__} generate (do_sample, KV cache, left "
                f"padding) on backend.loading.cached_hf_export weights; torch {torch.__version__}")
    return f"steerlens.generate (KV cache, left padding); torch {torch.__version__}"


def _hf_model(model: Model):
    from transformers import AutoModelForCausalLM

    from ..backend.loading import cached_hf_export, quiet_backend

    with quiet_backend():
        hf = AutoModelForCausalLM.from_pretrained(str(cached_hf_export(runtime.model_id(model))),
                                                  dtype=torch.float32)
    return hf.eval()


def _sample_batch(model: Model, hf, prompts: list[str], cfg: ChatSampleConfig,
                  seed: int) -> list[tuple[list[int], int]]:
    """(reply token ids, prompt length) per prompt; reply ids end at (and include) EOS if sampled."""
    if cfg.autocast_bf16:
        dev = runtime.model_device(model).type
        with torch.autocast(dev, dtype=torch.bfloat16):
            return _sample_batch(model, hf, prompts, replace(cfg, autocast_bf16=False), seed)
    tok = runtime.tokenizer(model)
    eos = tok.eos_token_id
    if cfg.sampler == "steerlens":
        from ..generate import generate

        gen = generate(model, prompts, chat=False, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, top_p=cfg.top_p, seed=seed)
        lens = [len(runtime.prompt_ids(model, p, chat=False)) for p in prompts]
        out = []
        for ids, n in zip(gen.tokens, lens):
            ids = list(ids)
            if eos in ids:
                ids = ids[:ids.index(eos) + 1]
            out.append((ids, n))
        return out
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(e) for e in enc)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    torch.manual_seed(seed)
    with torch.no_grad():
        res = hf.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                          temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                          max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, eos_token_id=eos)
    out = []
    for row, e in zip(res[:, width:].tolist(), enc):
        if eos in row:
            row = row[:row.index(eos) + 1]
        out.append((row, len(e)))
    return out


def chat_dir(model: Model, split: str, cfg: ChatSampleConfig, root: str | Path | None = None) -> Path:
    """The shard directory of a (model, split, sampling config); it does not depend on n.

    Args:
        model (Model): the model.
        split: "train" or "heldout".
        cfg: the sampling config.
        root: the root directory (None: `<cache>/sae/chat`).

    Returns:
        The directory path (not created).
    """
    key = hashlib.sha256(json.dumps([CHAT_VERSION, runtime.model_id(model), split, asdict(cfg)],
                                    sort_keys=True).encode()).hexdigest()[:12]
    base = Path(root) if root is not None else cache_root() / "sae" / "chat"
    return base / f"{runtime.model_id(model)}-{split}-{key}"


def _read_shard(path: Path, expect: list[ChatItem]) -> list[Conversation] | None:
    try:
        recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        head, body = recs[0], recs[1:]
        convs = [Conversation(ChatItem(**r["item"]), r["prompt"], r["reply"], r["prompt_tokens"],
                              r["reply_tokens"], r["finished"]) for r in body]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    if [c.item for c in convs] != expect or not isinstance(head.get("seconds"), (int, float)):
        return None
    return convs


def sample_chat(model: Model, n: int, *, split: str = "train", config: ChatSampleConfig | None = None,
                root: str | Path | None = None, show_progress: bool = True) -> ChatCorpus:
    """Sample (or resume) replies to the first `n` instructions of a split, cached in shards.

    Shard i holds conversations [i * shard_size, (i + 1) * shard_size) and samples with seed
    `config.seed + i`; finished shards on disk are reused (a corrupt or mismatched one is
    resampled), so a rerun after an interruption completes the corpus, and a larger `n` extends
    it. `provenance.json` is rewritten at the end.

    Args:
        model (Model): the model that answers (its tokenizer formats the prompts).
        n: number of conversations (>= 1).
        split: "train" or "heldout".
        config: the sampling config (default `ChatSampleConfig()`).
        root: the cache root (None: `<cache>/sae/chat`).
        show_progress: show a progress bar.

    Returns:
        The `ChatCorpus`.

    Raises:
        ValueError: for n < 1, an unknown split, or the "hf" sampler on a model with no Hugging
            Face export (use sampler="steerlens").
    """
    from ..backend.loading import EMBEDDED
    from ..progress import progress

    cfg = config or ChatSampleConfig()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if cfg.sampler == "hf" and runtime.model_id(model) not in EMBEDDED:
        raise ValueError(f"The 'hf' sampler needs an embedded model with a Hugging Face export; "
                         f"{runtime.model_id(model)!r} is not one of {sorted(EMBEDDED)}. Use "
                         "sampler='steerlens'.")
    items = instructions(n, cfg.seed, split)
    path = chat_dir(model, split, cfg, root)
    path.mkdir(parents=True, exist_ok=True)
    hf = None
    eot = end_of_turn(model)
    convs: list[Conversation] = []
    seconds = 0.0
    n_shards = -(-n // cfg.shard_size)
    for i in progress(range(n_shards), desc="sampling chat replies", enabled=show_progress):
        shard_items = items[i * cfg.shard_size:(i + 1) * cfg.shard_size]
        shard = path / f"shard_{i:05d}.jsonl"
        if len(shard_items) == cfg.shard_size and shard.exists():
            got = _read_shard(shard, shard_items)
            if got is not None:
                convs.extend(got)
                seconds += json.loads(shard.read_text(encoding="utf-8").split("\n", 1)[0])["seconds"]
                continue
        if cfg.sampler == "hf" and hf is None:
            hf = _hf_model(model)
        t0 = time.perf_counter()
        prompts = [render_prompt(model, it) for it in shard_items]
        new: list[Conversation] = []
        for b in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[b:b + cfg.batch_size]
            for j, (ids, n_prompt) in enumerate(
                    _sample_batch(model, hf, chunk, cfg, cfg.seed * 1_000_003 + i * 1009 + b)):
                finished = bool(ids) and ids[-1] == runtime.tokenizer(model).eos_token_id
                body = ids[:-1] if finished else ids
                new.append(Conversation(shard_items[b + j], chunk[j], runtime.decode(model, body),
                                        n_prompt, len(ids), finished))
        dt = time.perf_counter() - t0
        seconds += dt
        convs.extend(new)
        if len(shard_items) == cfg.shard_size:  # a partial last shard is not cached
            lines = [json.dumps({"shard": i, "seconds": dt, "version": CHAT_VERSION})]
            lines += [json.dumps({**asdict(c), "item": asdict(c.item)}, ensure_ascii=False)
                      for c in new]
            atomic_write_text(shard, "\n".join(lines) + "\n")
    tasks: dict[str, int] = {}
    for c in convs:
        tasks[c.item.task] = tasks.get(c.item.task, 0) + 1
    prov = ChatProvenance(
        version=CHAT_VERSION, model=runtime.model_id(model), split=split, config=asdict(cfg),
        sampler_detail=_sampler_detail(cfg.sampler), n_conversations=len(convs),
        n_distinct_instructions=len({c.item.instruction for c in convs}),
        n_prompt_tokens=sum(c.prompt_tokens for c in convs),
        n_reply_tokens=sum(c.reply_tokens for c in convs),
        n_finished=sum(c.finished for c in convs), n_shards=n_shards, wall_seconds=seconds,
        tasks=dict(sorted(tasks.items())),
        heldout_rule=f"blake2b-64(instruction) % {HELDOUT_MOD} == 0 is held out",
    )
    atomic_write_text(path / "provenance.json", json.dumps(prov.to_dict(), indent=1))
    return ChatCorpus(tuple(convs), prov, eot, path)

