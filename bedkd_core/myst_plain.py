"""MyST markup as plain Markdown, for the student and Colab copies that Jupyter and Colab open.

`Plain(...).markdown(text)` converts one markdown cell; `Plain.references()` lists what it cited:
* ``{cite:p}`key` `` (and ``{cite}``) becomes "(Gu et al., 2017)", ``{cite:t}`key` `` "Gu et al. (2017)", from
  the book's BibTeX file (`read_bibliography`); works of the same authors and year get 2021a, 2021b;
* ```` ```{figure} path ```` becomes a Markdown image whose URL is `assets` + the figure's repository path,
  its caption an italic paragraph;
* ```` ```{exercise} Title ```` a bold "Exercise N.k: Title" paragraph, ```` ```{solution} ```` a collapsed
  `<details>` block, ```` ```{math} ```` a `$$` block, any other directive a quotation headed by its title;
* ``{math}`x` `` becomes `$x$`; {ref}, {numref}, {doc}, {eq} and {term} their text; option lines, label
  targets `(name)=` and links to labels go (their text stays).
Markup with no plain form raises `MarkupError`, so none reaches a copy unconverted.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

_FENCE = re.compile(r"^\s*(?P<fence>`{3,}|:{3,})\s*\{(?P<name>[\w-]+)\}\s*(?P<title>.*?)\s*$")
_CODE_FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})")
_OPTION = re.compile(r"^\s*:(?P<name>[\w-]+):\s*(?P<value>.*?)\s*$")
_TARGET = re.compile(r"^\s*\([\w-]+\)=\s*$")
_LABEL_LINK = re.compile(r"\[([^\]]+)\]\(([\w-]+)\)")  # [text](label): no scheme, path or anchor
_ROLE = re.compile(r"(?<![`\\])\{(?P<name>[\w:-]+)\}(?P<ticks>`+)(?P<content>.+?)(?P=ticks)"
                   r"|(?P<code>(?P<code_ticks>`+).+?(?P=code_ticks))")
_FIELD = re.compile(r"\s*,?\s*([\w-]+)\s*=\s*")
_TITLED = re.compile(r"^(?P<text>.+?)\s*<(?P<target>[^<>]+)>$")
TEXT_ROLES = ("ref", "numref", "doc", "eq", "term")
CITE_STYLES = {"cite": "p", "cite:p": "p", "cite:t": "t"}


class MarkupError(ValueError):
    """MyST markup that has no plain Markdown form here; the message says which."""


# ---------------------------------------------------------------- the bibliography

def read_bibliography(*, path: str | Path) -> dict[str, dict[str, str]]:
    """key → {"type", field: value} of every entry of a BibTeX file (brace- or quote-delimited fields)."""
    text, entries, i = Path(path).read_text(encoding="utf-8"), {}, 0
    while (at := text.find("@", i)) >= 0:
        start = text.find("{", at)
        kind, end = text[at + 1 : start].strip().lower(), _closing(text, start)
        body = text[start + 1 : end]
        key, _, fields = body.partition(",")
        if kind not in ("comment", "string", "preamble"):
            entries[key.strip()] = {"type": kind, **_fields(fields)}
        i = end + 1
    return entries


def _closing(text: str, start: int) -> int:
    """The index of the brace that closes the one at `start`."""
    depth = 0
    for j in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j
    raise MarkupError(f"unbalanced braces in the bibliography after {text[start:start + 40]!r}")


def _fields(text: str) -> dict[str, str]:
    out, i = {}, 0
    while (match := _FIELD.match(text, i)) and match.end() < len(text):
        name, i = match.group(1).lower(), match.end()
        if text[i] == "{":
            end = _closing(text, i)
            value, i = text[i + 1 : end], end + 1
        elif text[i] == '"':
            end = text.index('"', i + 1)
            value, i = text[i + 1 : end], end + 1
        else:
            value = re.match(r"[^,\s]*", text[i:]).group()
            i += len(value)
        out[name] = " ".join(value.split())
    return out


def _plain(value: str) -> str:
    """A BibTeX value as text: braces dropped, `--` an en dash, `\\&` an ampersand."""
    return value.replace("\\&", "&").replace("--", "\u2013").replace("{", "").replace("}", "")


def _people(entry: dict) -> list[tuple[str, str]]:
    """(last name, first names) of each author (editor when there are none); "others" stays as it is."""
    people = []
    for name in re.split(r"\s+and\s+", entry.get("author") or entry.get("editor") or ""):
        last, comma, first = _plain(name).partition(",")
        if not comma:
            *first_names, last = last.split() or [""]
            first = " ".join(first_names)
        people.append((last.strip(), first.strip()))
    return people


def author_label(entry: dict) -> str:
    """The authors as a citation names them: "Gu", "Chen and Dai", "Gu et al."."""
    last = [p[0] for p in _people(entry)]
    if len(last) > 2 or last[-1:] == ["others"]:
        return f"{last[0]} et al."
    return " and ".join(last)


def _initials(first: str) -> str:
    return " ".join("-".join(f"{part[0]}." for part in word.split("-") if part) for word in first.split())


def reference(entry: dict, *, year: str) -> str:
    """One entry of a copy's reference list: authors, year, title, venue, link (APA-like)."""
    people = [f"{last}, {_initials(first)}" if first else last for last, first in _people(entry)]
    authors = people[0] if len(people) == 1 else ", ".join(people[:-1]) + ", & " + people[-1]
    parts = [f"{authors} ({year}). {_plain(entry.get('title', '')).rstrip('.')}."]
    venue = entry.get("journal") or entry.get("booktitle")
    if venue:
        prefix = "In " if "booktitle" in entry and "journal" not in entry else ""
        details = [f"{prefix}*{_plain(venue)}*"]
        if "volume" in entry:
            details.append(entry["volume"] + (f"({entry['number']})" if "number" in entry else ""))
        if "pages" in entry:
            details.append(("pp. " if prefix else "") + _plain(entry["pages"]))
        parts.append(", ".join(details) + ".")
    if entry.get("archiveprefix", "").lower() == "arxiv" and "eprint" in entry and not venue:
        parts.append(f"arXiv:{entry['eprint']}.")
    if "note" in entry:
        parts.append(_plain(entry["note"]).rstrip(".") + ".")
    link = (f"https://doi.org/{entry['doi']}" if "doi" in entry else entry.get("url")
            or (f"https://arxiv.org/abs/{entry['eprint']}" if "eprint" in entry else None))
    if link:
        parts.append(f"<{link}>")
    return " ".join(parts)


def year_suffixes(*, keys: list[str], bibliography: dict) -> dict[str, str]:
    """key → "a", "b", … for cited works that share authors and year (by title), "" for the others."""
    groups: dict[tuple[str, str], list[str]] = {}
    for key in keys:
        entry = bibliography[key]
        groups.setdefault((author_label(entry), entry.get("year", "")), []).append(key)
    suffixes = {}
    for group in groups.values():
        ordered = sorted(group, key=lambda k: _plain(bibliography[k].get("title", "")).lower())
        for n, key in enumerate(ordered):
            suffixes[key] = "abcdefghijklmnopqrstuvwxyz"[n] if len(group) > 1 else ""
    return suffixes


# ---------------------------------------------------------------- markdown

class Plain:
    """Converts one notebook's markdown cells in order (exercise numbers, citations and references follow)."""

    def __init__(self, *, folder: str, assets: str, bibliography: dict, chapter: str = "",
                 suffixes: dict[str, str] | None = None):
        """`folder`: the notebook's folder in the repository ("chapters"); `assets`: what a repository path
        needs in front to be a URL where the copy is opened ("../" from student/, a raw GitHub URL in Colab);
        `chapter` ("4") prefixes exercise numbers; `suffixes` from `year_suffixes` over every key cited."""
        self.folder, self.assets, self.bibliography, self.chapter = folder, assets, bibliography, chapter
        self.suffixes, self.exercises, self.cited = suffixes or {}, 0, []

    def markdown(self, text: str) -> str:
        """One markdown cell's MyST as plain Markdown."""
        lines, out, i = text.splitlines(), [], 0
        while i < len(lines):
            directive, code = _FENCE.match(lines[i]), _CODE_FENCE.match(lines[i])
            if directive or code:
                end = after_fence(lines, i, (directive or code).group("fence"))
                out.append(self._directive(directive, lines[i + 1 : end - 1]) if directive else
                           "\n".join(lines[i:end]))
                i = end
                continue
            if not _TARGET.match(lines[i]):
                out.append(_ROLE.sub(self._role, _LABEL_LINK.sub(r"\1", lines[i])))
            i += 1
        return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")

    def references(self) -> str | None:
        """A "References" section listing the works cited so far, by author and year; None when none were."""
        if not self.cited:
            return None
        def order(key: str) -> tuple:
            last = [p[0].lower() for p in _people(self.bibliography[key])]
            return last[0], self._year(key), last

        keys = sorted(self.cited, key=order)
        return "## References\n\n" + "\n".join(f"- {reference(self.bibliography[k], year=self._year(k))}"
                                               for k in keys)

    def _year(self, key: str) -> str:
        return self.bibliography[key].get("year", "n.d.") + self.suffixes.get(key, "")

    def _directive(self, match: re.Match, body: list[str]) -> str:
        options = {}
        while body and (option := _OPTION.match(body[0])):
            options[option.group("name")] = option.group("value")
            body = body[1:]
        name, title = match.group("name"), match.group("title")
        if name in ("solution-start", "solution-end"):
            raise MarkupError("gated solutions ({solution-start} … {solution-end}) cannot be collapsed across "
                              "cells; write the solution as one {solution} block")
        if name == "figure":
            return self._figure(title, options.get("alt", ""), self.markdown("\n".join(body)))
        if name == "math":
            return "$$\n" + "\n".join(body).strip("\n") + "\n$$\n"
        if name == "exercise":
            self.exercises += 1
        number = f"{self.chapter}.{self.exercises}" if self.chapter else str(self.exercises)
        inner = self.markdown("\n".join(body))
        if name == "exercise":
            return f"**Exercise {number}{': ' + title if title else ''}**\n\n{inner}\n"
        if name == "solution":
            return f"<details>\n<summary><b>Solution to exercise {number}</b></summary>\n\n{inner}\n\n</details>\n"
        heading = title or name.replace("-", " ").capitalize()
        quoted = "\n".join(f"> {line}" if line else ">" for line in inner.splitlines())
        return f"> **{heading}.**\n>\n{quoted}\n"

    def _figure(self, path: str, alt: str, caption: str) -> str:
        url = self.assets + posixpath.normpath(posixpath.join(self.folder, path))
        alt = alt.replace("[", "(").replace("]", ")")
        paragraphs = [f"*{p.strip()}*" for p in re.split(r"\n\s*\n", caption) if p.strip()]
        return "\n\n".join([f"![{alt}]({url})", *paragraphs]) + "\n"

    def _role(self, match: re.Match) -> str:
        if match.group("code"):
            return match.group("code")
        name, content = match.group("name"), match.group("content")
        if name in CITE_STYLES:
            return self._cite(CITE_STYLES[name], content)
        if name == "math":
            return f"${content}$"
        if name in TEXT_ROLES:
            titled = _TITLED.match(content)
            return titled.group("text") if titled else content
        raise MarkupError(f"the role {{{name}}} has no plain Markdown form in the copies")

    def _cite(self, style: str, content: str) -> str:
        keys = [key.strip() for key in content.split(",") if key.strip()]
        for key in keys:
            if key not in self.bibliography:
                raise MarkupError(f"{{cite}} key {key!r} is not in the bibliography")
            if key not in self.cited:
                self.cited.append(key)
        labels = [(author_label(self.bibliography[k]), self._year(k)) for k in keys]
        if style == "t":
            return ", ".join(f"{who} ({year})" for who, year in labels)
        return "(" + "; ".join(f"{who}, {year}" for who, year in labels) + ")"


def after_fence(lines: list[str], i: int, fence: str) -> int:
    """The index after the fence that closes the block opened on line i (CommonMark: same char, as long or longer)."""
    close = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
    for j in range(i + 1, len(lines)):
        if close.match(lines[j]):
            return j + 1
    return len(lines)
