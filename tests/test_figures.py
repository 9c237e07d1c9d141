"""The method figure: the committed chapters/figures/method.svg is exactly what bedkd_core.figures draws."""
import xml.etree.ElementTree as ElementTree

from bedkd_core import figures


def test_committed_method_figure_is_regenerated_byte_for_byte(tmp_path):
    fresh = figures.write_method_figure(tmp_path / "method.svg")
    assert fresh.read_bytes() == figures.METHOD_FIGURE.read_bytes(), (
        "chapters/figures/method.svg is stale: run `python -m bedkd_core.figures` and commit the file"
    )


def test_method_figure_is_well_formed_svg_with_a_description():
    root = ElementTree.fromstring(figures.method_svg())
    svg = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{svg}svg" and root.get("viewBox") == f"0 0 {figures.WIDTH} {figures.HEIGHT}"
    assert root.find(f"{svg}title").text and root.find(f"{svg}desc").text


def test_inline_math_becomes_italic_letters_and_scripts():
    assert figures._segments("on $D_c^{akd}$") == [("on ", ""), ("D", "i"), ("c", "sub"), ("akd", "sup")]
    text = figures._text(0, 0, "$s(x) < τ$")
    assert "&lt;" in text and '<tspan font-style="italic">τ</tspan>' in text
