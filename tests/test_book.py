"""Build the book and check every page in _toc.yml, as a reader would see it.

The rules depend on the chapter number NN of chapters/NN_name: no page shows error output, loads a
script from a CDN or shows an uncollapsed solution; every chapter has a Colab link (back-matter pages
without a number, such as the notation and the bibliography, have none); chapters 02+ show figures;
chapters 03+ carry widget state that headless Chromium draws offline from the vendored JS, and every menu or
slider among them changes what the page shows without a kernel. A scratch chapter 03, built in a temporary
copy of the book, shows that these checks pass on a good page and catch broken ones.
Screenshots of every page land in screenshots/.
"""
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
import yaml
from sphinx_external_toc.parsing import parse_toc_yaml

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "screenshots"
CDN_HOSTS = ("cdn.jsdelivr", "unpkg", "cdnjs")
TOC_DOCNAMES = list(parse_toc_yaml(REPO_ROOT / "_toc.yml"))
REPOSITORY = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["repository"]

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: bash .ci/install_chromium.sh")


def chapter_number(docname: str) -> int | None:
    """The NN of chapters/NN_name; None for a back-matter page without a number (notation, bibliography)."""
    match = re.match(r"(\d+)_", Path(docname).name)
    return int(match.group(1)) if match else None


def build_book(book_dir: Path, output_dir: Path) -> Path:
    """Build book_dir at quick scale with -W --keep-going into output_dir; the HTML folder."""
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "BEDKD_SCALE": "quick", "PYTHONPATH": python_path,  # chapters import this checkout
           "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # progress bars write to stderr
    command = [JUPYTER_BOOK, "build", "-W", "--keep-going", "--path-output", output_dir, book_dir]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    html = output_dir / "_build" / "html"
    assert result.returncode == 0, (
        f"book build failed (execution logs in {html / 'reports'}):\n{(result.stdout + result.stderr)[-6000:]}"
    )
    return html


def page_problems(html: str, number: int | None) -> list[str]:
    """What is wrong with the built page of chapter `number` (None: a back-matter page), judged from its HTML."""
    number = 0 if number is None else number
    problems = []
    if re.search(r'class="output (stderr|traceback|error)\b', html) or "Traceback (most recent call last)" in html:
        problems.append("error or stderr output")
    scripts = re.findall(r'<script[^>]*\ssrc="([^"]+)"', html)
    cdn_scripts = [src for src in scripts if any(host in src for host in CDN_HOSTS)]
    if cdn_scripts:
        problems.append(f"scripts from a CDN: {cdn_scripts}")
    if any("dropdown" not in classes.split() for classes in re.findall(r'class="(solution(?: [^"]*)?)"', html)):
        problems.append("a solution is not collapsed (give it `:class: dropdown`)")
    if number >= 2 and not re.search(r'<img[^>]*\ssrc="[^"]*_images/', html):
        problems.append("no figure (<img> from _images/)")
    if number >= 3:
        if "application/vnd.jupyter.widget-state+json" not in html:
            problems.append("no widget state")
        if not any(re.fullmatch(r"[^:]*_static/widgets/embed-amd\.js(\?.*)?", src) for src in scripts):
            problems.append("the vendored widget JS (_static/widgets/embed-amd.js) is not loaded")
    return problems


def chromium(page: Path, *args: str) -> str:
    """Open a page in headless Chromium with no network (every host name fails to resolve); its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
             "--virtual-time-budget=10000", *args, page.as_uri()],
            capture_output=True, text=True, timeout=180, check=True,
        )
    return result.stdout


def undrawn_widgets(page: Path) -> list[str]:
    """Problems if Chromium does not draw (at least) one widget per widget view in the page."""
    views = page.read_text().count("application/vnd.jupyter.widget-view+json")
    dom = chromium(page, "--dump-dom")
    drawn = sum("jupyter-widgets" in classes.split() for classes in re.findall(r'class="([^"]*)"', dom))
    if views == 0:
        return ["no widget view in the page"]
    return [] if drawn >= views else [f"widget views: {views}, drawn: {drawn}"]


WIDGET_PROBE_JS = r"""
(function () {
  // For every widget view with a menu or slider: move it one step as a reader would (a change event, an arrow
  // key) and record whether what the view shows, besides the control itself, changed. No kernel is running.
  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  async function probe() {
    await wait(3000);
    const results = [];
    const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
    for (const [view, script] of [...views].entries()) {
      const drawn = script.previousElementSibling;  // the embed manager draws each view just before its script
      const area = drawn && drawn.classList.contains("widget-subarea") ? drawn : script.parentElement;
      const select = area.querySelector("select");
      const handle = area.querySelector(".noUi-handle");
      if (!select && !handle) { results.push({view, control: null}); continue; }
      const box = (select || handle).closest(".widget-dropdown, .widget-slider") || select || handle;
      const shown = () => area.innerText.replace(box.innerText, "").trim();
      const position = () => (select ? String(select.selectedIndex) : handle.getAttribute("aria-valuenow"));
      const [before, control] = [shown(), position()];
      if (select) {
        select.selectedIndex = (select.selectedIndex + 1) % select.options.length;
        select.dispatchEvent(new Event("change", {bubbles: true}));
      } else {
        const atEnd = handle.getAttribute("aria-valuenow") === handle.getAttribute("aria-valuemax");
        const [key, code] = atEnd ? ["ArrowLeft", 37] : ["ArrowRight", 39];
        handle.dispatchEvent(new KeyboardEvent("keydown", {key, keyCode: code, which: code, bubbles: true}));
      }
      await wait(500);
      results.push({view, control: select ? "dropdown" : "slider", moved: position() !== control,
                    changed: shown() !== before, before: before.slice(0, 160), after: shown().slice(0, 160)});
    }
    const out = document.createElement("pre");
    out.id = "bedkd-widget-probe";
    out.textContent = JSON.stringify(results);
    document.body.appendChild(out);
  }
  window.addEventListener("load", probe);
})();
"""


def widget_switches(page: Path) -> list[dict]:
    """What each widget view of `page` does when its menu or slider moves, on the static page (no kernel)."""
    probed = page.with_name(f"{page.stem}_probed.html")
    probed.write_text(page.read_text().replace("</body>", f"<script>{WIDGET_PROBE_JS}</script></body>", 1))
    dom = chromium(probed, "--dump-dom")
    found = re.search(r'<pre id="bedkd-widget-probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, f"the widget probe did not finish on {page.name}"
    return json.loads(html.unescape(found.group(1)))


def static_widget_problems(page: Path) -> list[str]:
    """Problems if a widget view's control moves nothing but itself (it needs a kernel), or cannot be moved."""
    views = [v for v in widget_switches(page) if v["control"]]
    if not views:
        return ["no widget view with a menu or slider"]
    problems = []
    for v in views:
        if not v["moved"]:
            problems.append(f"view {v['view']}: the {v['control']} did not move")
        elif not v["changed"]:
            problems.append(f"view {v['view']}: moving the {v['control']} changes nothing else (it needs a kernel: "
                            "precompute its states with book.choice_view)")
    return problems


def screenshot(page: Path, name: str) -> Path:
    """Save what a reader sees of the page (its top 1280 x 8000 pixels) as screenshots/<name>.png."""
    SCREENSHOTS.mkdir(exist_ok=True)
    png = SCREENSHOTS / f"{name}.png"
    chromium(page, f"--screenshot={png}", "--window-size=1280,8000", "--hide-scrollbars")
    assert png.stat().st_size > 0
    return png


@pytest.fixture(scope="module")
def vendored_js() -> Path:
    subprocess.run(["bash", REPO_ROOT / ".ci" / "vendor_widgets.sh"], check=True)
    return REPO_ROOT / "_vendor_static"


@pytest.fixture(scope="module")
def book_html(vendored_js, tmp_path_factory) -> Path:
    return build_book(REPO_ROOT, tmp_path_factory.mktemp("book"))


@pytest.fixture(scope="module")
def probe_page(vendored_js, tmp_path_factory) -> Path:
    """The page of a scratch chapter 03 (setup cell, a figure, a slider) in a temporary copy of the book."""
    book = tmp_path_factory.mktemp("probe_book")
    for name in ("_config.yml", "references.bib"):  # the config names the bibliography file
        shutil.copy(REPO_ROOT / name, book)
    shutil.copytree(vendored_js, book / vendored_js.name)
    shutil.copytree(REPO_ROOT / "chapters" / "_css", book / "chapters" / "_css")  # html_static_path names it
    (book / "_toc.yml").write_text("format: jb-book\nroot: chapters/03_widget_probe\n")
    setup_cell = (REPO_ROOT / "chapters" / "_setup_cell.py").read_text().rstrip("\n")
    probe = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Widget probe"),
            nbformat.v4.new_code_cell(setup_cell),
            nbformat.v4.new_code_cell(
                "import ipywidgets\nimport matplotlib.pyplot as plt\n\n"
                "plt.plot([0, 1, 4, 9])\nplt.show()\n"
                'ipywidgets.VBox([ipywidgets.IntSlider(value=7, description="steps"), '
                'ipywidgets.Button(description="run", icon="check")])'
            ),
            nbformat.v4.new_code_cell(  # precomputed states: both controls work on the static page
                "from bedkd_core import book\n\n"
                'menu = ipywidgets.Dropdown(options=["one", "two"], description="menu")\n'
                'display(book.choice_view(menu, ["<p>page ONE</p>", "<p>page TWO</p>"]))\n'
                'slider = ipywidgets.SelectionSlider(options=[1, 2, 3], value=3, description="k")\n'
                'book.choice_view(slider, [f"<p>k is {k}</p>" for k in (1, 2, 3)])'
            ),
            nbformat.v4.new_code_cell(  # a Python callback: does nothing without a kernel
                'shown = ipywidgets.HTML("<p>value 1</p>")\n'
                'callback = ipywidgets.IntSlider(value=1, min=1, max=5, description="callback")\n'
                'callback.observe(lambda change: setattr(shown, "value", f"<p>value {change.new}</p>"), "value")\n'
                "ipywidgets.VBox([callback, shown])"
            ),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    (book / "chapters").mkdir(exist_ok=True)
    nbformat.write(probe, book / "chapters" / "03_widget_probe.ipynb")
    return build_book(book, book / "out") / "chapters" / "03_widget_probe.html"


def test_book_builds_every_toc_page(book_html):
    missing = [docname for docname in TOC_DOCNAMES if not (book_html / f"{docname}.html").exists()]
    assert not missing


@pytest.mark.parametrize("docname", TOC_DOCNAMES)
def test_page_html(book_html, docname):
    html = (book_html / f"{docname}.html").read_text()
    assert not page_problems(html, chapter_number(docname))
    if chapter_number(docname) is None:
        return  # a MyST page, not a notebook: nothing to open in Colab
    github = REPOSITORY["url"].removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{github}/blob/{REPOSITORY['branch']}/colab"
    name = Path(docname).name
    assert f"{colab}/{name}.ipynb" in html and f"{colab}/student/{name}.ipynb" in html  # the Colab copies
    assert f"{colab.removesuffix('/colab')}/{docname}.ipynb" not in html  # not the MyST chapter itself


@needs_chromium
@pytest.mark.parametrize("docname", TOC_DOCNAMES)
def test_page_renders(book_html, docname):
    page = book_html / f"{docname}.html"
    screenshot(page, Path(docname).name)
    if (chapter_number(docname) or 0) >= 3:
        assert not undrawn_widgets(page)
        assert not static_widget_problems(page)


def test_checks_pass_on_the_probe_chapter(probe_page):
    assert not page_problems(probe_page.read_text(), 3)


def test_checks_catch_broken_pages(probe_page):
    html = probe_page.read_text()
    cdn_src = "https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@1.0.6/dist/embed-amd.js"
    from_cdn = re.sub(r'src="[^"]*widgets/embed-amd\.js[^"]*"', f'src="{cdn_src}"', html)
    assert page_problems(from_cdn, 3) == [
        f"scripts from a CDN: {[cdn_src]}",
        "the vendored widget JS (_static/widgets/embed-amd.js) is not loaded",
    ]
    no_figure = re.sub(r"<img[^>]*_images/[^>]*>", "", html)
    assert page_problems(no_figure, 3) == ["no figure (<img> from _images/)"]
    with_stderr = html.replace('<div class="output stream', '<div class="output stderr', 1)
    assert page_problems(with_stderr, 3) == ["error or stderr output"]
    open_solution = html.replace("</article>", '<div class="solution admonition"></div></article>', 1)
    assert page_problems(open_solution, 3) == ["a solution is not collapsed (give it `:class: dropdown`)"]


@needs_chromium
def test_probe_widgets_are_drawn_offline(probe_page):
    screenshot(probe_page, "probe_03_widget_probe")
    assert not undrawn_widgets(probe_page)
    without_requirejs = probe_page.with_name("03_widget_probe_without_requirejs.html")
    without_requirejs.write_text(re.sub(r'<script src="[^"]*widgets/require\.js[^"]*"></script>', "",
                                        probe_page.read_text()))
    assert undrawn_widgets(without_requirejs) == ["widget views: 4, drawn: 0"]


@needs_chromium
def test_the_widget_probe_tells_precomputed_widgets_from_callbacks(probe_page):
    views = {v["view"]: v for v in widget_switches(probe_page)}
    assert [views[i]["control"] for i in range(4)] == ["slider", "dropdown", "slider", "slider"]
    assert views[1]["changed"] and "page TWO" in views[1]["after"] and "page ONE" in views[1]["before"]
    assert views[2]["changed"] and "k is 2" in views[2]["after"]  # at its end, the slider steps back
    assert static_widget_problems(probe_page) == [
        "view 0: moving the slider changes nothing else (it needs a kernel: precompute its states with "
        "book.choice_view)",
        "view 3: moving the slider changes nothing else (it needs a kernel: precompute its states with "
        "book.choice_view)",
    ]
