"""The generated pages (results, command line, config keys, the README's headline table) equal what
``python tools/docs_pages.py`` writes, so no table can drift from its records or the parser by hand."""

from __future__ import annotations

import importlib.util
import json

import pytest

from .snippets import ROOT

spec = importlib.util.spec_from_file_location("docs_pages", ROOT / "tools" / "docs_pages.py")
docs_pages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_pages)
PAGES = docs_pages.generated_pages()


@pytest.mark.parametrize("path", list(PAGES), ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_committed_page_is_what_the_generator_writes(path):
    assert path.is_file() and path.read_text() == PAGES[path], (
        f"{path.relative_to(ROOT)} differs from what the generator writes: run `python tools/docs_pages.py`")


def test_every_results_template_has_a_page_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for template in docs_pages.RESULTS_TEXT.glob("[!_]*.md"):
        assert f"results/{template.name}" in nav, f"results/{template.name} is not in mkdocs.yml's nav"


def test_cli_reference_lists_every_command_and_option():
    """Against the parser, read independently of the generator: each subcommand's every option string."""
    from kasa_peft.cli import build_parser

    page = PAGES[ROOT / "docs" / "reference" / "cli.md"]
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        section = page.split(f"## `kasa-peft {name}`", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in section, f"{option} of `kasa-peft {name}` is missing from cli.md"


def test_directives_read_the_records(tmp_path, monkeypatch):
    """`value` and `cell` take the number the record holds (records written here, by hand)."""
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "r.json").write_text(json.dumps({"run": {"losses": [{"loss": 2.25}, {"loss": 0.123456}]}}))
    (tmp_path / "t" / "summary.md").write_text("# T\n\n| m | a | b |\n|---|---|---|\n| x | 1 | **2** |\n\n"
                                               "| m | c |\n|---|---|\n| x | 3 |\n")
    monkeypatch.setattr(docs_pages, "RECORDS", tmp_path)
    monkeypatch.setattr(docs_pages, "ROOT", tmp_path)
    line = "loss {{ value t/r.json run.losses.1.loss .3f }}, x100 {{ value t/r.json run.losses.0.loss x100:.0f }}, " \
           "cell {{ cell t/summary.md 1 x 3 }} and {{ cell t/summary.md 2 x 2 }}, {{ cell t/summary.md 1 x+1 2 }}"
    assert docs_pages.fill(line, []) == "loss 0.123, x100 225, cell 2 and 3, 1"
    with pytest.raises(KeyError, match="no such cell"):
        docs_pages.fill("{{ cell t/summary.md 1 y 2 }}", [])
    with pytest.raises(KeyError, match="has no"):
        docs_pages.fill("{{ value t/r.json run.nothing .1f }}", [])
    with pytest.raises(ValueError, match="cannot read"):  # a directive broken over two lines
        docs_pages.fill("its loss {{ value t/r.json", [])
    sources: list[str] = []
    assert docs_pages.fill("{{ table t/summary.md 2 }}", sources) == "| m | c |\n|---|---|\n| x | 3 |"
    assert sources == ["`benchmarks/results/t/summary.md`"]
    with pytest.raises(KeyError, match="has no table 3"):
        docs_pages.fill("{{ table t/summary.md 3 }}", [])
