"""An offline byte-level BPE tokenizer for tiny test models (no hub downloads).

The BPE is trained once per process on a synthetic, deterministic corpus about the demo
tasks (counting, shapes, colours, numbers, geometry, reasoning tags, tool-call JSON), so
demo prompts and answers tokenise compactly. All 256 bytes are in the initial alphabet,
so no text is ever unknown. Each model family then adds its own special tokens.
"""
from __future__ import annotations

import functools
import random

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BPE_VOCAB_SIZE = 1000

_WORDS = {
    "counting": "how many count counting total number there are is one two three four five six seven eight nine ten "
                "zero eleven twelve more less fewer than equal same each all none some object objects item items",
    "shapes": "circle circles square squares triangle triangles rectangle star star stars dot dots shape shapes "
              "line lines point points box boxes polygon hexagon pentagon ellipse",
    "colours": "red green blue yellow black white orange purple pink brown gray grey colour color colours colors",
    "geometry": "area perimeter angle angles side sides length width height radius diameter degree degrees "
                "left right top bottom above below inside outside center centre corner image picture grid "
                "coordinate coordinates x y bbox bounding region crop zoom pixel pixels",
    "maths": "sum plus minus times divided multiply add subtract product difference answer question solve "
             "step steps therefore so because first then next finally result value equation calculate",
    "chat": "the a an of in on at and or to is are what which where who you I we it this that these those "
            "please think reason carefully final box boxed your with for from by be can use tool call "
            "user assistant system model User Assistant System How What Which Count The There Answer Image",
}
# Reasoning and tool tags are added (non-special) tokens, as in Qwen3: byte-level pre-tokenisation would
# otherwise split them at "<" and ">", and they must survive `skip_special_tokens` decoding.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>",
              "<tool_response>", "</tool_response>"]
_TAGS = [*TAG_TOKENS, "\\boxed{", "}"]
_JSON_BITS = ['{"name": "', '", "arguments": {', '"x": ', '"y": ', '"bbox": [', '], ', '"query": "', '"}}', '": ',
              ', "', "[", "]", "{", "}", ":", ",", '"']


def _corpus(n_lines: int = 4000, seed: int = 1234) -> list[str]:
    """Deterministic synthetic sentences mixing the demo vocabulary, digits, tags and JSON."""
    rng = random.Random(seed)
    words = [w for group in _WORDS.values() for w in group.split()]
    lines = []
    for i in range(n_lines):
        kind = i % 5
        if kind == 0:
            lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + rng.choice([".", "?", "!"]))
        elif kind == 1:
            a, b = rng.randint(0, 999), rng.randint(0, 99)
            lines.append(f"<think> {a} + {b} = {a + b} </think> <answer> {a + b} </answer>")
        elif kind == 2:
            n = rng.randint(0, 20)
            lines.append(f"There are {n} {rng.choice(_WORDS['colours'].split())} {rng.choice(_WORDS['shapes'].split())}."
                         f" The answer is \\boxed{{{n}}}.")
        elif kind == 3:
            x0, y0 = rng.randint(0, 448), rng.randint(0, 448)
            lines.append(f'<tool_call> {{"name": "zoom", "arguments": {{"bbox": [{x0}, {y0}, {x0 + 32}, {y0 + 32}]}}}}'
                         " </tool_call>")
        else:
            lines.append(" ".join(rng.choice(_TAGS + _JSON_BITS + list("0123456789")) for _ in range(8)))
    return lines


@functools.lru_cache(maxsize=1)
def _base_bpe_json() -> str:
    """Train the shared BPE once per process (about a second) and keep it as JSON."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=2)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def build_tokenizer(special_tokens: dict[str, str], extra_special: list[str] = (), chat_template: str | None = None,
                    **init_kwargs) -> PreTrainedTokenizerFast:
    """The offline BPE plus special tokens.

    `special_tokens` maps roles to token strings, e.g. {"eos_token": "<|im_end|>", "image_token": "<|image_pad|>"};
    each role becomes `tok.<role>` and `tok.<role>_id` (processors read these). `extra_special` lists more special
    tokens without a role. Tag tokens, then special tokens, get ids after the BPE vocabulary, in a fixed order.
    """
    raw = Tokenizer.from_str(_base_bpe_json())
    ordered = list(dict.fromkeys([*special_tokens.values(), *extra_special]))
    raw.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ordered])
    standard = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}
    named = {k: v for k, v in special_tokens.items() if k in standard}
    # Non-standard roles (image_token, boi_token, ...) become attributes through `extra_special_tokens`.
    extra_named = {k: v for k, v in special_tokens.items() if k not in standard}
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, chat_template=chat_template, extra_special_tokens=extra_named,
                                  **named, **init_kwargs)
    return tok
