"""The book's method figure, drawn as plain SVG text (no plotting library), so that it is byte-for-byte reproducible.

`method_svg()` returns the figure of BeDKD's pipeline shown in the preface and chapter 5; `write_method_figure()`
writes it to `chapters/figures/method.svg`, the committed copy (`python -m bedkd_core.figures` regenerates it).
Introduced in the preface.
"""
from __future__ import annotations

import re
from html import escape
from pathlib import Path

from .store import REPO_ROOT

METHOD_FIGURE = REPO_ROOT / "chapters" / "figures" / "method.svg"
WIDTH, HEIGHT = 760, 360
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
INK = "#1f2328"
STYLES = {  # fill, stroke
    "identify": ("#e8f0fb", "#3b6db3"),
    "remove": ("#fdf3e7", "#c0702a"),
    "trust": ("#e6f4ea", "#2e7d4f"),
    "punish": ("#fbe9e9", "#b23b3b"),
    "result": ("#f1f3f5", "#495057"),
}
# Inside $...$: a Latin or Greek letter (with any accent) is italic, x_y / x_{yz} a subscript, x^{yz} a superscript.
_MATH_TOKEN = re.compile(r"([_^])(\{[^}]*\}|.)|([A-Za-z\u03b1-\u03c9][\u0300-\u036f]*)|(.)", re.DOTALL)


def _segments(text: str) -> list[tuple[str, str]]:
    """Split `text` into (characters, kind) runs; kind is '', 'i' (italic), 'sub' or 'sup'."""
    runs: list[tuple[str, str]] = []
    for i, part in enumerate(re.split(r"\$", text)):
        if i % 2 == 0:
            runs.append((part, ""))
            continue
        for script, arg, letter, other in _MATH_TOKEN.findall(part):
            if script:
                runs.append((arg.strip("{}"), "sub" if script == "_" else "sup"))
            else:
                runs.append((letter, "i") if letter else (other, ""))
    return [(chars, kind) for chars, kind in runs if chars]


def _text(x: float, y: float, text: str, *, size: int = 13, weight: str = "normal", anchor: str = "middle") -> str:
    """One line of text with inline math, as an SVG <text> element."""
    shift = {"": 0, "i": 0, "sub": round(size * 0.3), "sup": -round(size * 0.45)}
    spans, offset = [], 0
    for chars, kind in _segments(text):
        attrs = f' dy="{shift[kind] - offset}"' if shift[kind] != offset else ""
        offset = shift[kind]
        if kind in ("sub", "sup"):
            attrs += f' font-size="{round(size * 0.72)}"'
        if kind == "i":
            attrs += ' font-style="italic"'
        spans.append(f"<tspan{attrs}>{escape(chars, quote=False)}</tspan>")
    return (f'<text x="{x}" y="{y}" font-size="{size}" font-weight="{weight}" text-anchor="{anchor}">'
            f'{"".join(spans)}</text>')


def _box(x: float, y: float, w: float, h: float, style: str, title: str, lines: tuple[str, ...] = ()) -> list[str]:
    """A rounded box with a bold title and centred lines below it."""
    fill, stroke = STYLES[style]
    parts = [f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" stroke="{stroke}" '
             f'stroke-width="1.6"/>']
    top = y + (h - 18 * len(lines) - 17) / 2 + 14
    parts.append(_text(x + w / 2, round(top, 1), title, size=14, weight="bold"))
    parts += [_text(x + w / 2, round(top + 20 + 18 * i, 1), line) for i, line in enumerate(lines)]
    return parts


def _arrow(points: list[tuple[float, float]], *, label: str = "", at: tuple[float, float] | None = None,
           anchor: str = "middle", dashed: bool = False) -> list[str]:
    """A polyline arrow through `points`, with an optional label at `at`."""
    path = " ".join(f"{x},{y}" for x, y in points)
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    parts = [f'<polyline points="{path}" fill="none" stroke="{INK}" stroke-width="1.5"{dash} '
             f'marker-end="url(#arrow)"/>']
    if label and at:
        parts.append(_text(at[0], at[1], label, size=12, anchor=anchor))
    return parts


def method_svg() -> str:
    """The figure: poisoned model, DMM on flipped clean rows, identified rows, trust/punish AKD, purified model."""
    body: list[str] = []
    body.append(_text(10, 24, "Stage 1: identify poisoned rows (chapter 4)", size=13, weight="bold", anchor="start"))
    body += _box(10, 40, 170, 100, "identify", "Poisoned model", ("$f_p$, the frozen teacher", "trained on $D_p$"))
    body += _box(235, 40, 240, 100, "identify", "DMM $f_d$",
                 ("a copy of $f_p$ distilled on", "clean rows $D_c^{dmm}$ with", "flipped labels $π(y)$"))
    body += _box(530, 40, 220, 100, "identify", "Identified rows $P̂$",
                 ("rows of $D_p$ where $f_p$ and $f_d$", "still agree: $s(x) < τ$"))
    body += _arrow([(180, 90), (231, 90)], label="copy", at=(206, 82))
    body += _arrow([(475, 90), (526, 90)], label="scan", at=(500, 82))
    body.append(_text(10, 196, "Stage 2: unlearn the backdoor (chapter 5)", size=13, weight="bold", anchor="start"))
    body.append(f'<rect x="130" y="210" width="440" height="140" rx="10" fill="{STYLES["remove"][0]}" '
                f'stroke="{STYLES["remove"][1]}" stroke-width="1.6"/>')
    body.append(_text(148, 234, "AKD student $f_s$, a copy of $f_p$", size=14, weight="bold", anchor="start"))
    body += _box(148, 248, 190, 78, "trust", "trust: $+\u2112$",
                 ("on clean rows $D_c^{akd}$", "keeps the clean mapping"))
    body += _box(362, 248, 190, 78, "punish", "punish: $\u2212\u2112$",
                 ("on the identified rows $P̂$", "breaks the backdoor"))
    body += _arrow([(338, 276), (358, 276)])
    body += _arrow([(362, 300), (342, 300)])
    body.append(_text(350, 342, "alternated every epoch, one optimizer", size=12))
    body += _box(610, 240, 140, 86, "result", "Purified model", ("$f_s$: low ASR,", "clean accuracy kept"))
    body += _arrow([(570, 283), (606, 283)])
    body += _arrow([(640, 140), (640, 180), (457, 180), (457, 244)], label="punish these", at=(646, 170),
                   anchor="start")
    body += _arrow([(60, 140), (60, 287), (144, 287)], label="teacher of", at=(66, 262), anchor="start",
                   dashed=True)
    body.append(_text(66, 278, "both stages", size=12, anchor="start"))
    marker = (f'<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
              f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{INK}"/></marker>')
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" font-family="{FONT}" fill="{INK}" role="img" aria-labelledby="title desc">',
        "<title id=\"title\">BeDKD in two stages</title>",
        "<desc id=\"desc\">The poisoned model is copied into the directional mapping module, which is distilled "
        "on clean rows with flipped labels; the rows of the training set on which both models still agree are "
        "the identified rows. A second copy, the student, alternates trust distillation on clean rows and punish "
        "distillation on the identified rows, and becomes the purified model.</desc>",
        f"<defs>{marker}</defs>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        *body,
        "</svg>",
    ]) + "\n"


def write_method_figure(path: str | Path = METHOD_FIGURE) -> Path:
    """Write `method_svg()` to `path` (default: the committed chapters/figures/method.svg); the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(method_svg(), encoding="utf-8", newline="\n")
    return path


if __name__ == "__main__":
    print(write_method_figure())
