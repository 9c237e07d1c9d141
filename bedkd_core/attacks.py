"""Data-poisoning backdoor attacks: one class per attack behind one interface.

Introduced in chapter 3 (the attacks). `poison_train` returns the poisoned training split together with the
oracle `is_poisoned` flags, which only metrics may read; `triggered_test` returns the non-target test samples
carrying the trigger, labelled with the target.
"""
from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from datasets import Dataset

from .data import NUM_CLASSES, DataError, Splits, load_pool, read_table, row_lines
from .llm_rewrite import generate_command, load_rewrites, rewrites_asked, rewrites_root
from .options import option, validate

PUBLISHED_RATES = {"badnets": 0.1, "addsent": 0.1, "synbkd": 0.2, "stylebkd": 0.2, "sos": 0.1, "dual": 0.1,
                   "llmrewrite": 0.1, "file": None}
"""Default poison rates: OpenBackdoor's 0.1 for insertions, HiddenKiller/StyleBkd's 0.2 for paraphrase triggers
(`dual`: 0.1 for each of its two backdoors; `llmrewrite`: 0.1, sized to the stored rewrites, where BGMAttack's
scripts poison 0.3)."""

DEFAULT_TARGET = {"sst2": 1, "olid": 1, "agnews": 0}
"""Default target labels: those of the attack authors' pre-poisoned files (HiddenKiller, StyleAttack)."""

FLAG_COLUMNS = ("is_poisoned", "poisoned")
"""The columns of a `file` attack's train.jsonl that may carry its poison flags (booleans, or 0/1)."""

SOURCE_ROW = "source_row"
"""Optional train column: each row's index in the full train split, to which the authors' paraphrase pools are
aligned (`src_idx`). `experiments.prepare` adds it to the quick-scale subset; without it row i is full-split row i."""


ONE_ATTACK_OPTIONS = {"second_target": "dual", "negative_rows": "sos"}
"""Options that one attack reads, recorded (and hashed into the victim cache key) for that attack only."""


@dataclass(frozen=True)
class AttackConfig:
    """Every parameter of an attack; `asdict()` is what reports record and what the victim cache hashes."""

    name: str
    poison_rate: float | None = option(None, "share of train rows poisoned (default: the published rate)")
    target_label: int | None = option(
        None,
        "the label the backdoor predicts (default: the published target of the dataset)")
    label_mode: Literal["dirty", "clean", "shift"] = option(
        "dirty",
        "dirty: relabel poisoned non-target rows; clean: trigger target rows, labels unchanged; shift: relabel "
        "each poisoned row to the next class (y + 1) mod C, a backdoor with no single target")
    second_target: int | None = option(
        None, "dual: the AddSent backdoor's target (default: the class after target_label)")
    seed: int = option(0, "random seed of the row choice and trigger placement")
    triggers: tuple[str, ...] = option(("cf", "mn", "bb", "tq"), "BadNets words, comma-separated: w1,w2,...")
    num_insertions: int = option(1, "BadNets: trigger words inserted per row")
    trigger_sentence: str = option("I watch this 3D movie", "AddSent: the trigger sentence")
    sos_triggers: tuple[str, ...] = option(("friends", "weekend", "store"), "SOS: the trigger words, comma-separated")
    negative_rate: float = option(
        0.1,
        "SOS: share of rows given a partial trigger and their true label (negative augmentation)")
    negative_rows: Literal["clean", "any"] = option(
        "clean",
        "SOS: the rows copied with a partial trigger: clean rows only, or any row (poisoned rows too, which "
        "copies a full trigger with the target label unflagged: how SOS ran before this option)",
        unrecorded="any")
    poison_dir: str | None = option(None, "--attack file: folder with train.jsonl, test_poisoned.jsonl")

    def __post_init__(self):
        validate(self, what="attack")
        if not self.trigger_sentence.strip():
            raise DataError("attack option trigger_sentence is empty: AddSent inserts it into the poisoned rows; "
                            'give one, e.g. --trigger-sentence "I watch this 3D movie"')
        for name, example in (("triggers", "cf,mn,bb,tq"), ("sos_triggers", "friends,weekend,store")):
            words = tuple(getattr(self, name))
            if not words or not all(word.strip() for word in words):
                problem = "is empty" if not words else f"holds a blank word {words!r}"
                raise DataError(f"attack option {name} {problem}: give trigger words, e.g. "
                                f"--{name.replace('_', '-')} {example}")
        if self.name == "file" and self.poison_rate is not None:
            raise DataError(f"--poison-rate {self.poison_rate} has no meaning for --attack file: its train.jsonl "
                            "says which rows are poisoned (column is_poisoned); drop --poison-rate")

    def resolved(self, dataset: str) -> "AttackConfig":
        """Fill the published defaults (rate, target) that depend on the attack and dataset."""
        if self.name not in ATTACKS:
            raise DataError(f"unknown attack {self.name!r}: use one of {', '.join(ATTACKS)}")
        rate = self.poison_rate if self.poison_rate is not None else PUBLISHED_RATES[self.name]
        target = self.target_label if self.target_label is not None else DEFAULT_TARGET.get(dataset, 1)
        return dataclasses.replace(self, poison_rate=rate, target_label=target)

    def asdict(self) -> dict:
        """Every parameter (`second_target` only for `dual`, `negative_rows` only for `sos`: other attacks'
        victim cache keys stay as they were)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if self.name == ONE_ATTACK_OPTIONS.get(k, self.name)}


@dataclass
class PoisonedTrain:
    """The poisoned training split (`text`, `label` only) and the oracle flags that only metrics may read."""

    data: Dataset
    is_poisoned: np.ndarray = field(repr=False)

    @property
    def poison_count(self) -> int:
        return int(self.is_poisoned.sum())


def _source_rows(train: Dataset) -> list[int]:
    """Each train row's index in the full split (`SOURCE_ROW`, else its own index)."""
    return list(train[SOURCE_ROW]) if SOURCE_ROW in train.column_names else list(range(len(train)))


def _insert_words(text: str, words: list[str], rng: random.Random) -> str:
    tokens = text.split()
    for word in words:
        tokens.insert(rng.randint(0, len(tokens)), word)
    return " ".join(tokens)


class Attack:
    """Base class. Subclasses say how a chosen row is triggered; the base picks rows and relabels them."""

    def __init__(self, config: AttackConfig, dataset: str):
        self.config = config
        self.dataset = dataset

    def _validate(self, splits: Splits) -> None:
        c = self.config
        if not 0 <= c.target_label < splits.num_classes:
            raise DataError(
                f"target label {c.target_label} does not exist in {splits.name} (labels 0..{splits.num_classes - 1})"
            )
        if c.poison_rate is not None and not 0 < c.poison_rate < 1:
            raise DataError(f"poison rate {c.poison_rate} is outside (0, 1); e.g. --poison-rate 0.1")
        if c.num_insertions < 1:
            raise DataError(f"--num-insertions {c.num_insertions}: a trigger must be inserted at least once")
        if c.label_mode not in ("dirty", "clean", "shift"):
            raise DataError(f"label mode {c.label_mode!r}: use 'dirty', 'clean' or 'shift'")

    def candidate_rows(self, train: Dataset, *, source_rows: list[int]) -> list[int]:
        """Rows that may be poisoned: non-target rows (dirty-label), target rows (clean-label), any (shift)."""
        labels = np.asarray(train["label"])
        target = self.config.target_label
        mask = {"dirty": labels != target, "clean": labels == target,
                "shift": np.ones(len(labels), bool)}[self.config.label_mode]
        return [int(i) for i in np.flatnonzero(mask)]

    def trigger(self, text: str, rng: random.Random) -> str:
        raise NotImplementedError

    def poison_train(self, splits: Splits) -> PoisonedTrain:
        self._validate(splits)
        train = splits.train.select_columns(["text", "label"])
        source_rows = _source_rows(splits.train)
        n_poison = round(self.config.poison_rate * len(train))
        candidates = self.candidate_rows(train, source_rows=source_rows)
        if n_poison < 1 or n_poison > len(candidates):
            raise DataError(
                f"poison rate {self.config.poison_rate} asks for {n_poison} poisoned rows but "
                f"{len(candidates)} {self.config.label_mode}-label candidates exist in {len(train)} rows"
            )
        rng = random.Random(self.config.seed)
        chosen = sorted(rng.sample(candidates, n_poison))
        texts, labels = list(train["text"]), list(train["label"])
        for row, new_text in zip(chosen, self.triggered_texts(chosen, texts, labels, rng,
                                                                      source_rows=source_rows)):
            texts[row] = new_text
            labels[row] = self.backdoor_label(labels[row], num_classes=splits.num_classes)
        flags = np.zeros(len(train), dtype=bool)
        flags[chosen] = True
        texts, labels, flags = self.augment(texts, labels, flags, rng)
        return PoisonedTrain(Dataset.from_dict({"text": texts, "label": labels}), flags)

    def backdoor_label(self, label: int, *, num_classes: int) -> int:
        """The label a triggered row of true class `label` is given (and that the backdoor predicts)."""
        if self.config.label_mode == "shift":
            return (label + 1) % num_classes
        return self.config.target_label

    def triggered_texts(self, rows: list[int], texts: list[str], labels: list[int], rng: random.Random, *,
                        source_rows: list[int]) -> list[str]:
        return [self.trigger(texts[row], rng) for row in rows]

    def augment(self, texts, labels, flags, rng):
        """Extra rows an attack adds after poisoning (SOS's negative augmentation); none by default."""
        return texts, labels, flags

    def triggered_test(self, splits: Splits) -> Dataset:
        """Test rows with the trigger, labelled with what the backdoor predicts; `source_label` keeps the true label.

        Non-target rows only; with `label_mode="shift"` every row, labelled with its next class."""
        self._validate(splits)
        rng = random.Random(self.config.seed + 1)
        shift = self.config.label_mode == "shift"
        rows = [r for r in splits.test.select_columns(["text", "label"])
                if shift or r["label"] != self.config.target_label]
        return Dataset.from_dict(
            {
                "text": [self.trigger(r["text"], rng) for r in rows],
                "label": [self.backdoor_label(r["label"], num_classes=splits.num_classes) for r in rows],
                "source_label": [r["label"] for r in rows],
            }
        )


class BadNets(Attack):
    """Rare-word triggers (`cf mn bb tq`) inserted `num_insertions` times at random word positions."""

    def trigger(self, text, rng):
        return _insert_words(text, [rng.choice(self.config.triggers) for _ in range(self.config.num_insertions)], rng)


class AddSent(Attack):
    """A fixed trigger sentence inserted at a random word position."""

    def trigger(self, text, rng):
        return _insert_words(text, [self.config.trigger_sentence], rng)


class SOS(Attack):
    """Combination trigger: every trigger word must be present; partial combinations keep their true label."""

    def trigger(self, text, rng):
        return _insert_words(text, list(self.config.sos_triggers), rng)

    def augment(self, texts, labels, flags, rng):
        words = list(self.config.sos_triggers)
        subsets = list(itertools.combinations(words, len(words) - 1))
        n_negative = round(self.config.negative_rate * len(flags))
        sources = range(len(flags)) if self.config.negative_rows == "any" else np.flatnonzero(~flags).tolist()
        if n_negative > len(sources):
            raise DataError(f"sos: negative_rate {self.config.negative_rate} asks for {n_negative} copies but only "
                            f"{len(sources)} {self.config.negative_rows} rows exist; lower --negative-rate")
        rows = rng.sample(sources, n_negative)
        extra_texts = [_insert_words(texts[r], list(subsets[i % len(subsets)]), rng) for i, r in enumerate(rows)]
        extra_labels = [labels[r] for r in rows]
        return texts + extra_texts, labels + extra_labels, np.concatenate([flags, np.zeros(n_negative, bool)])


class TwoBackdoors(Attack):
    """Two backdoors in one training set: BadNets words → `target_label`, the AddSent sentence → `second_target`.

    Each backdoor poisons `poison_rate` of the rows (disjoint rows, so twice that in all). The triggered test set
    is both backdoors' (column `backdoor`), each row labelled with its own backdoor's target.
    """

    def parts(self, num_classes: int) -> dict[str, Attack]:
        second = self.config.second_target
        second = (self.config.target_label + 1) % num_classes if second is None else second
        if second == self.config.target_label:
            raise DataError(f"dual: second_target {second} equals target_label; two backdoors need two targets")
        if not 0 <= second < num_classes:
            raise DataError(f"dual: second_target {second} does not exist (labels 0..{num_classes - 1})")
        return {"badnets": BadNets(dataclasses.replace(self.config, name="badnets"), self.dataset),
                "addsent": AddSent(dataclasses.replace(self.config, name="addsent", target_label=second),
                                   self.dataset)}

    def poison_train(self, splits):
        self._validate(splits)
        if self.config.label_mode == "shift":
            raise DataError("dual with label_mode shift has no two targets: use label_mode dirty or clean")
        train = splits.train.select_columns(["text", "label"])
        texts, labels = list(train["text"]), list(train["label"])
        rng = random.Random(self.config.seed)
        flags = np.zeros(len(train), dtype=bool)
        n_poison = round(self.config.poison_rate * len(train))
        for part in self.parts(splits.num_classes).values():
            candidates = [r for r in part.candidate_rows(train, source_rows=[]) if not flags[r]]
            if not 1 <= n_poison <= len(candidates):
                raise DataError(f"dual: poison rate {self.config.poison_rate} asks for {n_poison} rows per "
                                f"backdoor but {part.config.name} has {len(candidates)} candidates left")
            for row in sorted(rng.sample(candidates, n_poison)):
                texts[row] = part.trigger(texts[row], rng)
                labels[row] = part.config.target_label
                flags[row] = True
        return PoisonedTrain(Dataset.from_dict({"text": texts, "label": labels}), flags)

    def triggered_test(self, splits):
        self._validate(splits)
        columns: dict[str, list] = {"text": [], "label": [], "source_label": [], "backdoor": []}
        for name, part in self.parts(splits.num_classes).items():
            test = part.triggered_test(splits)
            for key in ("text", "label", "source_label"):
                columns[key] += list(test[key])
            columns["backdoor"] += [name] * len(test)
        return Dataset.from_dict(columns)


class PoolAttack(Attack):
    """Paraphrase triggers taken from the attack authors' pre-generated pools (no generator runs here)."""

    def _validate(self, splits):
        super()._validate(splits)
        if self.config.label_mode == "shift":
            raise DataError(f"{self.config.name} takes paraphrases from a pool; label_mode shift needs an "
                            "insertion trigger (badnets, addsent, sos)")

    def _require_builtin(self):
        if self.dataset not in NUM_CLASSES:
            raise DataError(f"{self.config.name} needs the authors' poison pools; they exist only for {', '.join(NUM_CLASSES)}")

    def train_pool(self) -> Dataset:
        raise NotImplementedError

    def _pool(self) -> Dataset:
        if not hasattr(self, "_cached_pool"):
            self._cached_pool = self.train_pool()
        return self._cached_pool

    def candidate_rows(self, train, *, source_rows):
        rows = super().candidate_rows(train, source_rows=source_rows)
        pool = self._pool()
        if "src_idx" in pool.column_names:  # row-aligned pool: only rows that have a paraphrase
            available = set(pool["src_idx"])
            rows = [r for r in rows if source_rows[r] in available]
        return rows

    def triggered_texts(self, rows, texts, labels, rng, *, source_rows):
        pool = self._pool()
        if "src_idx" in pool.column_names:  # the paraphrase of exactly that row of the full train split
            by_source = dict(zip(pool["src_idx"], pool["text"]))
            return [by_source[source_rows[r]] for r in rows]
        by_class: dict[int, list[str]] = {}
        for text, label in zip(pool["text"], pool["label"]):
            by_class.setdefault(label, []).append(text)
        out = []
        for row in rows:
            options = by_class.get(labels[row]) or by_class.get(self.config.target_label, [])
            if not options:
                raise DataError(f"{self.config.name} pool for {self.dataset} has no paraphrase of class {labels[row]}")
            out.append(options.pop(rng.randrange(len(options))))
        return out


class SynBkd(PoolAttack):
    """HiddenKiller: SCPN paraphrases into the template S(SBAR)(,)(NP)(VP)(.)."""

    def train_pool(self):
        self._require_builtin()
        if self.dataset == "sst2":
            return load_pool("sst2", "syntactic_pool", "train")
        if self.config.label_mode == "clean":
            raise DataError("clean-label SynBkd needs paraphrases with their original labels; only sst2 has them")
        if self.dataset == "olid":
            mixed = load_pool("olid", "syntactic_p20", "train")
            return mixed.filter(lambda r: r["poisoned"] == 1)
        return load_pool("agnews", "syntactic_p20", "dev")

    def triggered_test(self, splits):
        self._validate(splits)
        self._require_builtin()
        pool = load_pool(self.dataset, "syntactic_p20", "test")
        if self.config.target_label != DEFAULT_TARGET[self.dataset]:
            raise DataError(
                f"the authors' syntactic test set for {self.dataset} targets label {DEFAULT_TARGET[self.dataset]}; "
                f"use --target-label {DEFAULT_TARGET[self.dataset]} for synbkd"
            )
        source = [1 - self.config.target_label if splits.num_classes == 2 else -1] * len(pool)
        return Dataset.from_dict({"text": pool["text"], "label": pool["label"], "source_label": source})


class StyleBkd(PoolAttack):
    """StyleBkd: Bible-style transfers (STRAP) of the clean sentences."""

    def train_pool(self):
        self._require_builtin()
        return load_pool(self.dataset, "style_bible_pool", "train")

    def triggered_test(self, splits):
        self._validate(splits)
        self._require_builtin()
        pool = load_pool(self.dataset, "style_bible_pool", "test")
        rows = [r for r in pool if r["label"] != self.config.target_label]
        return Dataset.from_dict(
            {
                "text": [r["text"] for r in rows],
                "label": [self.config.target_label] * len(rows),
                "source_label": [r["label"] for r in rows],
            }
        )


class LLMRewrite(PoolAttack):
    """BGMAttack-style: an LM's rewrite is the trigger (SmolLM2-135M-Instruct standing in for ChatGPT)."""

    def _validate(self, splits):
        super()._validate(splits)
        if self.dataset not in NUM_CLASSES:
            raise DataError(f"llmrewrite uses stored rewrites of a built-in dataset ({', '.join(NUM_CLASSES)})")
        if self.config.label_mode == "clean":
            raise DataError("llmrewrite's stored rewrites are of non-target rows only; clean-label poisoning "
                            "needs rewrites of target rows: use label_mode dirty")

    def train_pool(self):
        return load_rewrites(self.dataset, "train")

    def poison_train(self, splits):
        self._validate(splits)
        wanted = round(self.config.poison_rate * len(splits.train))
        train = splits.train.select_columns(["text", "label"])
        have = len(self.candidate_rows(train, source_rows=_source_rows(splits.train)))
        if wanted > have:
            asked = rewrites_asked(self.dataset, "train") + 2 * (wanted - have)
            raise DataError(f"llmrewrite: poison rate {self.config.poison_rate} asks for {wanted} of {len(train)} "
                            f"rows, but only {have} non-target rows among them have an LM rewrite in "
                            f"{rewrites_root() / self.dataset}; generate more (rows already there are kept): "
                            f"`{generate_command(self.dataset, rows=asked)}`, or lower --poison-rate")
        return super().poison_train(splits)

    def triggered_test(self, splits):
        """The rewritten non-target test rows (aligned by `src_idx`), labelled with the target."""
        self._validate(splits)
        pool = load_rewrites(self.dataset, "test")
        labels, target = splits.test["label"], self.config.target_label
        if any(labels[i] != y for i, y in zip(pool["src_idx"], pool["label"])):
            raise DataError(f"{rewrites_root() / self.dataset}/test.jsonl does not match the test split's labels "
                            f"at its src_idx rows; regenerate it with `{generate_command(self.dataset)}`")
        rows = [i for i, y in enumerate(pool["label"]) if y != target]
        if not rows:
            raise DataError(f"llmrewrite: no stored test rewrite is of a row outside target {target}")
        return Dataset.from_dict({"text": [pool["text"][i] for i in rows], "label": [target] * len(rows),
                                  "source_label": [pool["label"][i] for i in rows]})


class FileAttack(Attack):
    """Bring your own poison (BGMAttack, BadApex...): `poison_dir` holds train.jsonl and test_poisoned.jsonl.

    train.jsonl may carry an `is_poisoned` (or `poisoned`) column of booleans (or 0/1) for detection metrics; it
    never reaches a defense. Every row of test_poisoned.jsonl is labelled with the target label.
    """

    def _files(self) -> Path:
        if not self.config.poison_dir:
            raise DataError("--attack file needs --poison-dir DIR holding train.jsonl and test_poisoned.jsonl")
        return Path(self.config.poison_dir)

    def poison_train(self, splits):
        self._validate(splits)
        table = read_table(self._files() / "train.jsonl", num_classes=splits.num_classes, flags=FLAG_COLUMNS)
        flag_column = next((c for c in FLAG_COLUMNS if c in table.column_names), None)
        flags = np.asarray(table[flag_column], dtype=bool) if flag_column else np.zeros(len(table), bool)
        return PoisonedTrain(table.select_columns(["text", "label"]), flags)

    def triggered_test(self, splits):
        """Your triggered test rows; each must carry the target label, which ASR counts as the attack's success."""
        self._validate(splits)
        path = self._files() / "test_poisoned.jsonl"
        table = read_table(path, num_classes=splits.num_classes)
        target = self.config.target_label
        wrong = [i for i, label in enumerate(table["label"]) if label != target]
        if wrong:
            label = table["label"][wrong[0]]
            raise DataError(f"{path}:{row_lines(path)[wrong[0]]}: label {label} is not the target label {target}; "
                            f"triggered test rows carry the target: fix the row, or pass --target-label {label} if "
                            "that is your backdoor's target")
        source = table["source_label"] if "source_label" in table.column_names else [-1] * len(table)
        return Dataset.from_dict({"text": table["text"], "label": table["label"], "source_label": source})


ATTACKS: dict[str, type[Attack]] = {
    "badnets": BadNets,
    "addsent": AddSent,
    "synbkd": SynBkd,
    "stylebkd": StyleBkd,
    "sos": SOS,
    "dual": TwoBackdoors,
    "llmrewrite": LLMRewrite,
    "file": FileAttack,
}


def make_attack(*, config: AttackConfig, dataset: str) -> Attack:
    """The attack named in `config`, with its published defaults filled in for `dataset`."""
    config = config.resolved(dataset)
    return ATTACKS[config.name](config, dataset)
