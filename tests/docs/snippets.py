"""The code blocks of the README and of ``docs/``, and the marker that says how each one is tested.

A marker is an HTML comment on the line right before a fenced block (invisible on the rendered page):

    <!-- test: skip reason="needs a GPU" -->       not run here; the reason says what it needs that this machine lacks
    <!-- test: check -->                           bash: every command is a `kasa-peft` command, parsed by the real
                                                   parser (train's settings resolved too, config files read); nothing
                                                   is loaded or trained
    <!-- test: run -->                             bash: every `kasa-peft` command runs, in a fresh directory, and
                                                   must exit 0
    <!-- test: config -->                          yaml: a valid config file (every key known, every value checked)

Python blocks run without a marker. Options, comma-separated after ``test:`` (python and ``run`` blocks):

    setup=NAME          first run the named preparation (``snippet_setups.SETUPS``), which defines the names the
                        snippet says are given (``model``, ``batch``, ...) and writes the files it reads
    replace "X"=NAME    stand-in for what this machine lacks: in python the string literal "X", in bash the
                        argument X, becomes the path of the local artefact NAME (``snippet_setups.ARTEFACTS``)
    replace 'X'='Y'     python: the text X becomes Y, for what differs on this machine (no GPU: ``use_cpu=True``);
                        the marker shows the change to whoever reads the page's source
    continue            python: run in the namespace the page's previous python block left

Blocks in other languages (``text``, ``yaml`` without a marker, no language) are shown, not run. A bash block
without a marker is an error: every command on a page is either tested or says why it is not.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")
OPTION = re.compile(r'\s*(?:replace\s+"(?P<old>[^"]+)"=(?P<artefact>[\w-]+)'
                    r"|replace\s+'(?P<text_old>[^']+)'='(?P<text_new>[^']*)'|setup=(?P<setup>[\w-]+)"
                    r'|reason="(?P<reason>[^"]*)"|(?P<word>[\w-]+))[\s,]*')
MODES = {"skip", "check", "run", "config", "continue"}
RUNNABLE = {"python", "bash", "yaml"}


@dataclass
class Snippet:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    mode: str | None = None  # skip, check, run, config; None: a python block run as it is
    reason: str = ""
    setup: str | None = None
    replacements: dict[str, str] = field(default_factory=dict)
    edits: dict[str, str] = field(default_factory=dict)
    continues: bool = False

    @property
    def name(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def parse_marker(body: str, where: str) -> dict:
    """The options of one ``<!-- test: ... -->`` marker; a malformed one raises naming ``where``."""
    options: dict = {"replacements": {}, "edits": {}, "continues": False, "mode": None, "reason": "", "setup": None}
    position = 0
    while position < len(body):
        match = OPTION.match(body, position)
        if not match or match.end() == position:
            raise ValueError(f"{where}: cannot read the test marker at {body[position:]!r}")
        position = match.end()
        if match["old"]:
            options["replacements"][match["old"]] = match["artefact"]
        elif match["text_old"]:
            options["edits"][match["text_old"]] = match["text_new"]
        elif match["setup"]:
            options["setup"] = match["setup"]
        elif match["reason"] is not None:
            options["reason"] = match["reason"].strip()
        elif match["word"] == "continue":
            options["continues"] = True
        elif match["word"] in MODES:
            options["mode"] = match["word"]
        else:
            raise ValueError(f"{where}: unknown test marker word {match['word']!r} (known: {sorted(MODES)})")
    if options["mode"] == "skip" and not options["reason"]:
        raise ValueError(f'{where}: a skipped block needs reason="what it needs that this machine lacks"')
    return options


def page_snippets(page: Path) -> list[Snippet]:
    lines = page.read_text().splitlines()
    snippets, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, lang, body = opening["indent"], opening["lang"], []
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            body.append(lines[end][len(indent):] if lines[end].startswith(indent) else lines[end].lstrip())
            end += 1
        snippet = Snippet(page, index + 1, lang, "\n".join(body) + "\n")
        marker = MARKER.match(lines[index - 1]) if index else None
        if marker:
            options = parse_marker(marker["body"], snippet.name)
            snippet.mode, snippet.reason, snippet.setup = options["mode"], options["reason"], options["setup"]
            snippet.replacements, snippet.continues = options["replacements"], options["continues"]
            snippet.edits = options["edits"]
        snippets.append(snippet)
        index = end + 1
    return snippets


def all_snippets() -> list[Snippet]:
    return [s for page in PAGES for s in page_snippets(page) if s.lang in RUNNABLE]


def commands(code: str) -> list[list[str]]:
    """The shell commands of a bash block, continuation lines joined, comments dropped, as argument lists."""
    joined = re.sub(r"\\\n", " ", code)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]
