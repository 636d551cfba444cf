"""Synthetic recall texts: the passkey prompt and the multi-query associative-recall (MQAR) lists.

The same templates make a few training documents (corpus.py, seed 0) and the eval probes
(evaluate.py, other seeds), so the probes test retrieval over distances and list lengths the
model was not trained on, not an unseen format.
"""
import random

PASSKEY_INTRO = ("There is an important piece of information hidden inside a lot of irrelevant "
                 "text. Find it and memorize it. I will quiz you about it.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
WORDS = ("apple river stone cloud horse lamp bread field mirror candle garden window silver "
         "forest winter tiger violin harbor pepper castle rabbit desert engine marble shadow "
         "island basket feather hammer lemon meadow needle ocean pillow rocket saddle tunnel "
         "valley wagon anchor bottle copper dragon falcon ginger jacket kettle ladder").split()


def passkey_text(rng, filler_before, filler_after):
    """(prompt ending in QUESTION, the 5-digit key)."""
    key = str(rng.randint(10000, 99999))
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    parts = [PASSKEY_INTRO] + [FILLER] * filler_before + [needle] + [FILLER] * filler_after
    return " ".join(parts + [QUESTION]), key


def mqar_text(rng, pairs, queries):
    """(text, [(key, value)] in query order): a list of `pairs` word-number pairs, then
    `queries` of them asked back in random order."""
    keys = rng.sample(WORDS, pairs)
    values = {k: str(rng.randint(100, 999)) for k in keys}
    listing = ", ".join(f"{k} {values[k]}" for k in keys)
    asked = rng.sample(keys, queries)
    recall = ", ".join(f"{k} {values[k]}" for k in asked)
    return f"Pairs: {listing}. Recall: {recall}.", [(k, values[k]) for k in asked]


def training_documents(count, seed):
    """`count` (id, text) drills, alternating passkey and MQAR, of up to ~400 tokens each."""
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        if i % 2 == 0:
            before, after = rng.randint(0, 12), rng.randint(0, 12)
            prompt, key = passkey_text(rng, before, after)
            docs.append((f"recall/{i:05d}", f"{prompt} {key}."))
        else:
            pairs = rng.randint(4, 24)
            text, _ = mqar_text(rng, pairs, rng.randint(1, pairs))
            docs.append((f"recall/{i:05d}", text))
    return docs
