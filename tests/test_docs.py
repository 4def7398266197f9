"""The docs name real things: every command in README.md's and docs/*.md's shell blocks exists
(a `squeezegen` command and its options, a `make` target, a script and its options, a `dvc -S`
key in params.yaml), and every relative link points to a file (and heading) that exists.

Fast: it reads files and the Typer app's registered commands; it runs nothing.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
import yaml

from squeezegen.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
# Tools the docs may call that are not ours: their commands are not checked.
EXTERNAL_TOOLS = {"dvc", "mlflow", "git", "pip", "uv", "accelerate", "hf", "huggingface-cli", "pytest",
                  "export", "source", "cd", "ls", "cat", "du", "head", "tail", "grep", "wc", "nvidia-smi", "7z", "unzip"}
PYTHONS = {"python", "python3", "python3.11", ".venv/bin/python"}
WRAPPERS = {"time", "env"}
CONTROL = {"|", "||", "&&", ";", "&"}
REDIRECTS = {">", ">>", "<", "2>", "&>"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {' '.join(self.words)}"


@dataclass(frozen=True)
class Link:
    page: str
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.target}"


# ---------------------------------------------------------------- reading the pages

def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(info string, line number of the first content line, lines) of each fenced code block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, info, start, body = opening.group(1), opening.group(2).lower(), i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((info, start, body))
        i += 1
    return blocks


def without_code(text: str) -> str:
    """The page with fenced blocks and inline code blanked (line numbers kept)."""
    out, fence = [], None
    for line in text.splitlines():
        marker = re.match(r"^\s*(```+|~~~+)", line)
        if fence is None and marker:
            fence = marker.group(1)
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append("")
        else:
            out.append(re.sub(r"`[^`]*`", "``", line))
    return "\n".join(out)


def split_commands(line: str) -> list[list[str]]:
    """One shell line → its simple commands (words), without comments, redirections or operators."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, words, skip_next = [], [], False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in CONTROL:
            commands.append(words)
            words = []
        elif token in REDIRECTS:
            skip_next = True
        else:
            words.append(token)
    commands.append(words)
    return [c for c in commands if c]


def shell_commands(page: Path) -> list[Command]:
    found = []
    for info, start, body in fenced_blocks(page.read_text()):
        if info not in SHELL_LANGUAGES:
            continue
        pending, first = "", start
        for number, raw in enumerate(body, start):
            line = re.sub(r"^\s*\$\s+", "", raw)
            if not pending:
                first = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            for words in split_commands(pending + line):
                found.append(Command(page.relative_to(ROOT).as_posix(), first, tuple(words)))
            pending = ""
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def relative_links(page: Path) -> list[Link]:
    """Inline links and images (their text may wrap) and reference definitions, outside code."""
    text, found = without_code(page.read_text()), []
    for match in [*LINK.finditer(text), *REFERENCE.finditer(text)]:
        target = match.group(1)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            line = text.count("\n", 0, match.start(1)) + 1
            found.append(Link(page.relative_to(ROOT).as_posix(), line, target))
    return found


def heading_slugs(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces → hyphens."""
    slugs = set()
    for line in without_code(page.read_text().replace("``", "")).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slugs.add(re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-"))
    return slugs


# ---------------------------------------------------------------- what is real

CLI = typer.main.get_command(app)
SQUEEZEGEN_OPTIONS = {
    name: {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}
    | {"--help"}
    for name, command in CLI.commands.items()
}
MAKE_TARGETS = set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", (ROOT / "Makefile").read_text(), re.MULTILINE))
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
DVC_OUTS = {str(out if isinstance(out, str) else next(iter(out)))
            for stage in DVC_STAGES.values() for out in stage.get("outs", [])}


def param_exists(key: str) -> bool:
    node = PARAMS
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_squeezegen(args: list[str]) -> list[str]:
    if not args or args[0] == "--help":
        return []
    name, rest = args[0], args[1:]
    if name not in SQUEEZEGEN_OPTIONS:
        return [f"`squeezegen {name}` is not a command (commands: {', '.join(sorted(SQUEEZEGEN_OPTIONS))})"]
    return [f"`squeezegen {name}` has no option {word.split('=')[0]}" for word in rest
            if word.startswith("-") and word.split("=")[0] not in SQUEEZEGEN_OPTIONS[name]]


def check_make(args: list[str]) -> list[str]:
    targets = [a for a in args if not a.startswith("-") and not ENV_ASSIGNMENT.match(a)]
    return [f"`make {t}`: the Makefile has no target {t}" for t in targets if t not in MAKE_TARGETS]


def check_python(args: list[str]) -> list[str]:
    if not args or args[0] in {"-c", "--version"}:
        return []
    if args[0] == "-m":
        if len(args) < 2 or importlib.util.find_spec(args[1]) is None:
            return [f"`python -m {args[1] if len(args) > 1 else ''}`: no such module"]
        return []
    script = ROOT / args[0]
    if not script.is_file():
        return [f"`python {args[0]}`: no such script"]
    source = script.read_text()
    return [f"`python {args[0]}` has no option {word.split('=')[0]}" for word in args[1:]
            if word.startswith("--") and f'"{word.split("=")[0]}"' not in source]


def check_dvc(args: list[str]) -> list[str]:
    problems = []
    for i, word in enumerate(args):
        value = None
        if word in {"-S", "--set-param"} and i + 1 < len(args):
            value = args[i + 1]
        elif word.startswith("-S") and len(word) > 2:
            value = word[2:]
        if value is not None and not param_exists(value.split("=")[0]):
            problems.append(f"`dvc … -S {value}`: params.yaml has no key {value.split('=')[0]}")
    if args[:1] in (["repro"], ["checkout"]):
        for target in args[1:]:
            if not target.startswith("-") and target not in DVC_STAGES and target not in DVC_OUTS:
                problems.append(f"`dvc {args[0]} {target}`: no such stage or output in dvc.yaml")
    return problems


def check_command(words: list[str]) -> list[str]:
    """What is wrong with one simple command from the docs (empty if nothing)."""
    words = list(words)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    while words and words[0] in WRAPPERS | {"nice"}:
        wrapper = words.pop(0)
        if wrapper == "nice" and words[:1] == ["-n"]:
            words = words[2:]
    if not words:
        return []
    program, args = words[0], words[1:]
    problems = [f"{w}: no such file" for w in words
                if re.search(r"\.(py|sh)$", w) and not w.startswith(("/", "$", "~")) and not (ROOT / w).exists()]
    if program in {"squeezegen", ".venv/bin/squeezegen"}:
        problems += check_squeezegen(args)
    elif program == "make":
        problems += check_make(args)
    elif program in PYTHONS:
        problems += check_python(args)
    elif program == "dvc" or program == ".venv/bin/dvc":
        problems += check_dvc(args)
    elif program.startswith(".venv/bin/") and program.removeprefix(".venv/bin/") in EXTERNAL_TOOLS:
        pass
    elif re.search(r"\.(py|sh)$", program):
        pass  # a script run directly: its existence is checked above
    elif program not in EXTERNAL_TOOLS:
        problems.append(f"`{program}` is neither ours (squeezegen, make, python <script>) nor a known tool")
    return problems


def check_link(link: Link) -> list[str]:
    page = ROOT / link.page
    path_part, _, anchor = link.target.partition("#")
    target = (page.parent / path_part).resolve() if path_part else page
    try:
        relative = target.relative_to(ROOT).as_posix()
    except ValueError:
        return [f"{link.target} leaves the repository"]
    if any(relative == out or relative.startswith(out.rstrip("/") + "/") for out in DVC_OUTS):
        return [f"{link.target} is a DVC output: absent from a fresh clone, name it in `code` instead"]
    if not target.exists():
        return [f"{link.target}: no such file"]
    if anchor and target.suffix == ".md" and anchor not in heading_slugs(target):
        return [f"{link.target}: {relative} has no heading #{anchor}"]
    return []


COMMANDS = [command for page in PAGES for command in shell_commands(page)]
LINKS = [link for page in PAGES for link in relative_links(page)]


# ---------------------------------------------------------------- the tests

def test_docs_are_found():
    """The collection itself works: enough commands and links, from the README and docs pages."""
    readme_commands = [c for c in COMMANDS if c.page == "README.md"]
    assert len(readme_commands) >= 15, readme_commands
    assert len(COMMANDS) >= 40 and len({c.page for c in COMMANDS}) >= 5
    assert {"squeezegen", "make", "dvc", "python", "mlflow"} <= {c.words[0] for c in COMMANDS}
    assert len(LINKS) >= 40 and len([link for link in LINKS if link.page == "README.md"]) >= 15


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_shell_command_names_something_real(command):
    assert check_command(list(command.words)) == [], str(command)


@pytest.mark.parametrize("link", LINKS, ids=str)
def test_relative_link_resolves(link):
    assert check_link(link) == [], str(link)


def test_readme_links_every_docs_page():
    linked = {(ROOT / link.target.partition("#")[0]).resolve() for link in LINKS if link.page == "README.md"}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md's docs index lacks {missing}"


@pytest.mark.parametrize("name", ["params.yaml", "dvc.yaml"])
def test_docs_pointers_in_config_comments_resolve(name):
    """`docs/<page>.md[#anchor]` named in a comment of params.yaml / dvc.yaml exists."""
    pointers = re.findall(r"(docs/[\w-]+\.md)(?:#([\w-]+))?", (ROOT / name).read_text())
    for path, anchor in pointers:
        assert (ROOT / path).is_file(), f"{name} points to {path}, which does not exist"
        if anchor:
            assert anchor in heading_slugs(ROOT / path), f"{name} points to {path}#{anchor}: no such heading"


def test_readme_stays_a_guide():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("line, problem", [
    ("squeezegen frobnicate --x", "not a command"),
    ("squeezegen sample --colour red", "no option --colour"),
    ("make deploy", "no target deploy"),
    ("python benchmarks/no_such_script.py", "no such script"),
    ("python benchmarks/q4k_bench.py --no-such-flag", "no option --no-such-flag"),
    ("python -m squeezegen.no_such_module", "no such module"),
    ("dvc exp run -S rqvae.no_such_knob=3", "no key rqvae.no_such_knob"),
    ("dvc repro no_such_stage", "no such stage"),
    ("FOO=1 nice -n 10 frobnicate --all", "nor a known tool"),
    ("accelerate launch stages/no_such_stage.py", "no such file"),
])
def test_checker_catches_what_does_not_exist(line, problem):
    problems = [p for words in split_commands(line) for p in check_command(words)]
    assert any(problem in p for p in problems), problems


def test_checker_accepts_real_commands():
    for line in ["squeezegen sample --style cubism --genre portrait -n 4 --no-refine --out x.png",
                 "make repro && make test", "dvc exp run -S profiles.full.refiner.batch_size=4 -S profile=full",
                 "SQUEEZEGEN_Q4K_DECODE=torch python benchmarks/sd15_memory.py --size 256 --steps 2 > out.txt",
                 "git log --format='%H %s' -S \"$MD5\" -- dvc.lock | head  # a comment"]:
        assert [p for words in split_commands(line) for p in check_command(words)] == [], line


@pytest.mark.parametrize("target, problem", [
    ("docs/no_such_page.md", "no such file"),
    ("docs/results.md#no-such-heading", "no heading"),
    ("reports/report.md", "DVC output"),
])
def test_link_checker_catches_broken_links(target, problem):
    assert any(problem in p for p in check_link(Link("README.md", 1, target)))
