"""MyST as plain Markdown for the copies: citations from BibTeX, figures with URLs that work where the copy is
opened, exercises, solutions, admonitions and roles readable without MyST, and an error for markup with no
plain form."""
from pathlib import Path

import pytest

from bedkd_core import myst_plain
from bedkd_core.myst_plain import MarkupError, Plain

REPO_ROOT = Path(__file__).resolve().parent.parent

BIB = r"""% a comment line, outside every entry
@misc{gu2017badnets,
  title   = {{BadNets}: Identifying Vulnerabilities},
  author  = {Gu, Tianyu and Dolan-Gavitt, Brendan and Garg, Siddharth},
  year    = {2017},
  eprint  = {1708.06733},
  archiveprefix = {arXiv},
}

@article{chen2021bki,
  title   = "Mitigating Backdoor Attacks in {LSTM}-Based Text Classification",
  author  = {Chen, Chuanshuai and Dai, Jiazhu},
  journal = {Neurocomputing},
  volume  = {452},
  pages   = {253--262},
  year    = 2021,
  doi     = {10.1016/j.neucom.2021.04.105},
}

@inproceedings{qi2021b,
  title     = {Zebra Title},
  author    = {Fanchao Qi and Yangyi Chen and Mukai Li},
  booktitle = {Proceedings of EMNLP},
  year      = {2021},
  url       = {https://example.org/zebra},
}

@inproceedings{qi2021a,
  title     = {Apple Title},
  author    = {Qi, Fanchao and Li, Mukai and Chen, Yangyi},
  booktitle = {Proceedings of ACL},
  year      = {2021},
}
"""

EXERCISES = '''## Exercises

```{exercise} Flip the labels
:label: ex-flip

Implement `flip_labels`.
```

````{solution} ex-flip
:class: dropdown

The answer:

```python
[(y + 1) % K for y in labels]
```
````

```{exercise} Another one
:label: ex-two

Explain why.
```
'''


@pytest.fixture
def bib(tmp_path) -> dict:
    path = tmp_path / "references.bib"
    path.write_text(BIB)
    return myst_plain.read_bibliography(path=path)


def plain(bib=None, **kwargs) -> Plain:
    settings = dict(folder="chapters", assets="../", bibliography=bib or {}, chapter="4")
    return Plain(**{**settings, **kwargs})


def test_the_bibtex_parser_reads_braces_quotes_and_numbers(bib):
    assert sorted(bib) == ["chen2021bki", "gu2017badnets", "qi2021a", "qi2021b"]
    assert bib["gu2017badnets"]["title"] == "{BadNets}: Identifying Vulnerabilities"
    assert bib["chen2021bki"]["title"] == "Mitigating Backdoor Attacks in {LSTM}-Based Text Classification"
    assert (bib["chen2021bki"]["year"], bib["chen2021bki"]["type"]) == ("2021", "article")


def test_citations_become_author_year_text(bib):
    converter = plain(bib, suffixes=myst_plain.year_suffixes(keys=["qi2021b", "qi2021a"], bibliography=bib))
    text = converter.markdown("BadNets {cite:p}`gu2017badnets` and {cite:t}`chen2021bki`; both Qi papers "
                              "{cite}`qi2021b, qi2021a`.")
    assert text == ("BadNets (Gu et al., 2017) and Chen and Dai (2021); both Qi papers "
                    "(Qi et al., 2021b; Qi et al., 2021a).")
    assert converter.cited == ["gu2017badnets", "chen2021bki", "qi2021b", "qi2021a"]


def test_the_reference_list_names_each_cited_work_once_in_author_order(bib):
    converter = plain(bib, suffixes=myst_plain.year_suffixes(keys=["qi2021b", "qi2021a"], bibliography=bib))
    converter.markdown("{cite:p}`qi2021b` {cite:p}`gu2017badnets` {cite:p}`qi2021a` {cite:p}`gu2017badnets`")
    assert converter.references() == (
        "## References\n\n"
        "- Gu, T., Dolan-Gavitt, B., & Garg, S. (2017). BadNets: Identifying Vulnerabilities. "
        "arXiv:1708.06733. <https://arxiv.org/abs/1708.06733>\n"
        "- Qi, F., Li, M., & Chen, Y. (2021a). Apple Title. In *Proceedings of ACL*.\n"
        "- Qi, F., Chen, Y., & Li, M. (2021b). Zebra Title. In *Proceedings of EMNLP*. <https://example.org/zebra>")
    assert plain(bib).references() is None
    article = myst_plain.reference(bib["chen2021bki"], year="2021")
    assert article == ("Chen, C., & Dai, J. (2021). Mitigating Backdoor Attacks in LSTM-Based Text Classification. "
                       "*Neurocomputing*, 452, 253\u2013262. <https://doi.org/10.1016/j.neucom.2021.04.105>")


def test_an_unknown_key_or_role_is_an_error(bib):
    with pytest.raises(MarkupError, match="'nobody2020' is not in the bibliography"):
        plain(bib).markdown("{cite:p}`nobody2020`")
    with pytest.raises(MarkupError, match=r"the role \{sub-ref\} has no plain Markdown form"):
        plain(bib).markdown("see {sub-ref}`x`")


def test_code_is_left_alone():
    source = "Write ``{cite:p}`key` `` or `{note}`.\n\n```python\nx = '{cite:p}`key`'\n```"
    assert plain().markdown(source) == source


@pytest.mark.parametrize("assets, url", [
    ("../", "../chapters/figures/method.svg"),
    ("https://raw.githubusercontent.com/o/r/main/",
     "https://raw.githubusercontent.com/o/r/main/chapters/figures/method.svg"),
])
def test_a_figure_becomes_an_image_and_an_italic_caption(assets, url):
    source = ("Before.\n\n```{figure} figures/method.svg\n:name: fig-method\n:width: 100%\n:alt: A flow chart [sic]"
              "\n\nThe caption, with $f_p$\nand {cite:p}`gu2017badnets`.\n\nA second paragraph.\n```\n\nAfter.")
    bib = {"gu2017badnets": {"type": "misc", "author": "Gu, Tianyu", "year": "2017", "title": "BadNets"}}
    text = plain(bib, assets=assets).markdown(source)
    assert text == (f"Before.\n\n![A flow chart (sic)]({url})\n\n*The caption, with $f_p$\nand (Gu, 2017).*\n\n"
                    "*A second paragraph.*\n\nAfter.")


def test_exercises_stay_and_solutions_collapse():
    text = plain().markdown(EXERCISES)
    assert "{exercise}" not in text and "{solution}" not in text and ":label:" not in text and ":class:" not in text
    assert "**Exercise 4.1: Flip the labels**\n\nImplement `flip_labels`." in text
    assert "**Exercise 4.2: Another one**\n\nExplain why." in text
    solution = text[text.index("<details>"):text.index("</details>")]
    assert "<summary><b>Solution to exercise 4.1</b></summary>" in solution
    assert "```python\n[(y + 1) % K for y in labels]\n```" in solution


def test_other_directives_roles_labels_and_label_links_become_plain_markdown():
    text = plain().markdown("(my-label)=\n## Title\n\nSee [the setup](my-label) and [arXiv](https://x.org), "
                            "{ref}`the setup <my-label>`, {numref}`fig-x`, {math}`a^2`, {term}`trigger`."
                            "\n\n```{note}\nTwo\n\nlines\n```\n\n:::{admonition} Careful\n:class: tip\n"
                            "Body\n:::\n\n```{math}\n:label: eq-x\nx = 1\n```\n")
    assert text == ("## Title\n\nSee the setup and [arXiv](https://x.org), the setup, fig-x, $a^2$, trigger.\n\n"
                    "> **Note.**\n>\n> Two\n>\n> lines\n\n> **Careful.**\n>\n> Body\n\n$$\nx = 1\n$$")


def test_gated_solutions_are_refused():
    with pytest.raises(MarkupError, match="gated solutions"):
        plain().markdown("```{solution-start} ex\n```\nsecret")


def test_the_books_bibliography_parses_and_formats():
    bib = myst_plain.read_bibliography(path=REPO_ROOT / "references.bib")
    assert len(bib) == (REPO_ROOT / "references.bib").read_text().count("\n@")
    for key, entry in bib.items():
        line = myst_plain.reference(entry, year=entry["year"])
        assert "{" not in line and "}" not in line and "--" not in line, (key, line)
        assert entry["title"] and myst_plain.author_label(entry), key
