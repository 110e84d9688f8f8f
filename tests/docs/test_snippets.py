"""Every code block of README.md and docs/ runs here (tiny models, seconds each), or its marker says why it cannot:
a snippet that stops working fails this test. How blocks are marked: ``tests/docs/snippets.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kasa_peft.cli import build_parser, main
from kasa_peft.pipelines.config import resolve_config

from .snippet_setups import ARTEFACTS, SETUPS
from .snippets import ROOT, Snippet, all_snippets, commands, page_snippets, parse_marker

SNIPPETS = all_snippets()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """``artefacts(NAME)``: the path of the local artefact NAME, built once per test module."""
    root, built = tmp_path_factory.mktemp("artefacts"), {}

    def get(name: str) -> str:
        if name not in ARTEFACTS:
            raise KeyError(f"unknown artefact {name!r} in a test marker; known: {sorted(ARTEFACTS)}")
        if name not in built:
            built[name] = ARTEFACTS[name](root)
        return built[name]
    return get


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def python_source(snippet: Snippet, artefacts) -> str:
    code = snippet.code
    for old, artefact in snippet.replacements.items():
        if f'"{old}"' not in code:
            raise AssertionError(f"{snippet.name}: the marker replaces \"{old}\", which the snippet does not contain")
        code = code.replace(f'"{old}"', repr(artefacts(artefact)))
    for old, new in snippet.edits.items():
        if old not in code:
            raise AssertionError(f"{snippet.name}: the marker replaces {old!r}, which the snippet does not contain")
        code = code.replace(old, new)
    return code


def run_python(snippet: Snippet, artefacts) -> None:
    """Run ``snippet`` after the page's earlier python blocks it continues from, each with its own setup."""
    chain = [snippet]
    blocks = [s for s in page_snippets(snippet.page) if s.lang == "python" and s.line < snippet.line]
    while chain[0].continues:
        if not blocks:
            raise AssertionError(f"{snippet.name}: `continue` but no python block before it on the page")
        chain.insert(0, blocks.pop())
    namespace: dict = {"__name__": "__snippet__"}
    for block in chain:
        if block.setup:
            namespace.update(SETUPS[block.setup](artefacts))
        exec(compile(python_source(block, artefacts), block.name, "exec"), namespace)  # noqa: S102


def check_command(words: list[str], where: str) -> None:
    """Parse a documented command with the real parser; a train command's settings are resolved as well."""
    if words[0] != "kasa-peft":
        raise AssertionError(f"{where}: `{' '.join(words)}` is not a kasa-peft command: mark the block "
                             "`<!-- test: skip reason=... -->` with what it needs")
    try:
        args = build_parser().parse_args(words[1:])
    except SystemExit as exit_:
        raise AssertionError(f"{where}: `{' '.join(words)}` is rejected by the parser (exit {exit_.code})") from None
    if args.command == "train":
        args.handler(args)  # reads --config, resolves and checks every setting; trains nothing


def test_every_runnable_block_is_marked_or_python():
    unmarked = [s.name for s in SNIPPETS if s.lang == "bash" and s.mode is None]
    assert not unmarked, f"bash blocks without a test marker (see tests/docs/snippets.py): {unmarked}"


def test_markers_are_read_as_written():
    """The marker grammar, on a marker written by hand (so a parser change that drops options fails here)."""
    options = parse_marker('run, replace "minilm"=tiny-bert-dir, setup=classification-files', "here")
    assert options["mode"] == "run" and options["setup"] == "classification-files"
    assert options["replacements"] == {"minilm": "tiny-bert-dir"}
    assert parse_marker("""replace 'f(x)'='f(x, y=1)', continue""", "here")["edits"] == {"f(x)": "f(x, y=1)"}
    assert parse_marker('skip reason="needs a GPU"', "here")["reason"] == "needs a GPU"
    with pytest.raises(ValueError, match="needs reason"):
        parse_marker("skip", "here")
    with pytest.raises(ValueError, match="unknown test marker word"):
        parse_marker("sometimes", "here")


def test_a_broken_snippet_fails(tmp_path, artefacts, workdir):
    """The runner does fail: a page whose python calls a name that does not exist, and a command with an option
    the parser does not have."""
    page = tmp_path / "page.md"
    page.write_text("```python\nimport kasa_peft\nkasa_peft.no_such_function()\n```\n\n<!-- test: check -->\n"
                    "```bash\nkasa-peft train --task glue:rte --model minilm --no-such-option 1\n```\n")
    python, bash = page_snippets(page)
    with pytest.raises(AttributeError, match="no_such_function"):
        run_python(python, artefacts)
    with pytest.raises(AssertionError, match="rejected by the parser"):
        check_command(commands(bash.code)[0], bash.name)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.name for s in SNIPPETS])
def test_snippet(snippet: Snippet, artefacts, workdir, capsys, monkeypatch):
    if snippet.mode == "skip":
        pytest.skip(snippet.reason)
    if snippet.setup and snippet.setup not in SETUPS:
        raise AssertionError(f"{snippet.name}: unknown setup {snippet.setup!r}; known: {sorted(SETUPS)}")
    if snippet.lang == "python":
        run_python(snippet, artefacts)
    elif snippet.lang == "yaml":
        if snippet.mode != "config":
            pytest.skip("a YAML block shown, not a config file")
        resolve_config(yaml.safe_load(snippet.code), {})
    elif snippet.mode == "check":
        monkeypatch.chdir(ROOT)  # config files are named relative to the repository
        for words in commands(snippet.code):
            check_command(words, snippet.name)
    elif snippet.mode == "run":
        if snippet.setup:
            SETUPS[snippet.setup](artefacts)
        for words in commands(snippet.code):
            words = [artefacts(snippet.replacements[w]) if w in snippet.replacements else w for w in words]
            assert words[0] == "kasa-peft", f"{snippet.name}: only kasa-peft commands run here"
            code = main(words[1:])
            assert code == 0, f"{snippet.name}: `{' '.join(words)}` exited {code}: {capsys.readouterr().err}"
    else:
        raise AssertionError(f"{snippet.name}: a {snippet.lang} block marked {snippet.mode!r} cannot be tested")


def test_pages_are_found():
    assert Path(ROOT / "README.md") in {s.page for s in SNIPPETS}
    assert any(s.page.parent.name == "guides" for s in SNIPPETS)
