"""The docs say what the code does: every `wmtp …` command line in README.md and docs/ resolves to a real
command of the Typer app with real options, and the names the docs give for checkpoints and metrics are the
ones the code writes.

Command lines are taken from fenced code blocks (a `wmtp` at the start of a line, after a `$ ` prompt, after
`;` / `&&`, in parentheses or after a `:` label such as `follow it:`; `.venv/bin/wmtp` too; `\\` continues a
line) and from inline code spans that start with `wmtp `. Placeholders (`…`, `<run dir>`, `NAME`, `[...]`)
stand for arguments and are not checked; every `--option` is.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HELP_OPTIONS = {"--help", "-h"}  # WmtpTyper's context_settings; not in a command's params
PLACEHOLDERS = {"…", "...", "…]"}

FENCE = re.compile(r"^(\s*)(```|~~~)")
# `wmtp ` where a command starts: line start, a prompt, a separator, a parenthesis or a label's colon.
SEPARATOR = re.compile(r"\s*(?:;|&&|\|\|?)\s+")
IN_BLOCK = re.compile(r"(?:^|(?<=\$ )|(?<=\()|(?<=: ))((?:\.venv/bin/)?wmtp [^\n]*)")
CODE_SPAN = re.compile(r"`((?:\.venv/bin/)?wmtp [^`]+)`")
CUT = re.compile(r"\s#\s|\s#$|;(?:\s|$)|,\s|\s&&|\s\|\s|`|\s→|\s←")


def doc_files() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class CommandLine:
    where: str  # file:line
    text: str


def fenced_lines(text: str):
    """(line number, line) of every line inside a fenced code block, `\\` continuations joined."""
    inside, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            yield number, line


def command_lines(text: str, name: str = "<text>") -> list[CommandLine]:
    """Every `wmtp …` command line of a markdown text (see the module docstring)."""
    found = []
    for number, line in fenced_lines(text):
        for piece in SEPARATOR.split(line.strip()):
            for match in IN_BLOCK.finditer(piece):
                found.append(CommandLine(f"{name}:{number}", match.group(1)))
    for number, line in prose_lines(text):
        for match in CODE_SPAN.finditer(line):
            found.append(CommandLine(f"{name}:{number}", match.group(1)))
    return found


def words(command: str) -> list[str]:
    """The command's words up to a comment, separator, arrow or a closing parenthesis it did not open."""
    command = CUT.split(command, maxsplit=1)[0]
    depth, end = 0, len(command)
    for i, char in enumerate(command):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            end = i
            break
    command = command[:end].strip()
    try:
        return shlex.split(command)
    except ValueError:  # an apostrophe in a placeholder, a quote left open by the cut
        return command.split()


def root_command():
    import typer.main

    from wmtp_cli.main import app

    return typer.main.get_command(app)


def option_names(command) -> set[str]:
    names = set(HELP_OPTIONS)
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def problems_of(command_text: str, root=None) -> list[str]:
    """What is wrong with one `wmtp …` command line: an unknown command or an option the command lacks."""
    root = root or root_command()
    tokens = [token.strip("[]") for token in words(command_text)]
    tokens = [token for token in tokens if token]
    if not tokens or tokens[0] not in ("wmtp", ".venv/bin/wmtp"):
        return [f"not a wmtp command: {command_text!r}"]
    command, path, rest = root, ["wmtp"], tokens[1:]
    while getattr(command, "commands", None) and rest and not rest[0].startswith("-"):
        word = rest[0]
        if word in PLACEHOLDERS or word.isupper():  # `wmtp data …`, `wmtp COMMAND`
            return []
        if word not in command.commands:
            return [f"{' '.join(path)}: no command {word!r} (has {', '.join(sorted(command.commands))})"]
        command, path, rest = command.commands[word], [*path, word], rest[1:]
    known = option_names(command)
    wrong = []
    for token in rest:
        if not token.startswith("-") or token == "-" or re.fullmatch(r"-\d[\d.e-]*", token):
            continue
        for option in token.split("=", 1)[0].split("/"):
            if option and option not in known:
                wrong.append(f"{' '.join(path)}: no option {option}")
    return wrong


def all_command_lines() -> list[CommandLine]:
    found = []
    for path in doc_files():
        found += command_lines(path.read_text(), str(path.relative_to(REPO_ROOT)))
    return found


# ---------------------------------------------------------------- the docs


def test_the_docs_hold_command_lines_to_check():
    lines = all_command_lines()
    assert len(lines) > 100
    assert {line.where.split(":")[0] for line in lines} >= {
        "README.md",
        "docs/training.md",
        "docs/platform.md",
        "docs/evaluation.md",
        "docs/storage.md",
        "docs/data.md",
    }


def test_every_wmtp_command_line_in_the_docs_is_a_real_command_with_real_options():
    root = root_command()
    wrong = [
        f"{line.where}: {problem}    [{line.text}]"
        for line in all_command_lines()
        for problem in problems_of(line.text, root)
    ]
    assert not wrong, "\n".join(wrong)


def anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces → `-`."""
    headings = [line.lstrip("#").strip() for _, line in prose_lines(markdown.read_text()) if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_docs_link_only_to_files_in_the_repository():
    """Relative links resolve inside the checkout (no ../shared/DESIGN.md) and to a heading that exists, and
    docs/index.md lists every page."""
    link = re.compile(r"\]\(([^)#\s]+)(?:#([^)]*))?\)")
    for path in doc_files():
        for target, anchor in link.findall(path.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(REPO_ROOT) and resolved.exists(), f"{path.name}: {target}"
            if anchor:
                assert anchor in anchors(resolved), f"{path.name}: {target}#{anchor}"
    index = (REPO_ROOT / "docs" / "index.md").read_text()
    for page in (REPO_ROOT / "docs").glob("*.md"):
        assert page.name == "index.md" or f"]({page.name})" in index, page.name


def test_readme_stays_short_and_starts_with_the_two_set_up_commands():
    text = (REPO_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert [line.split("#")[0].strip() for line in block.splitlines()] == [
        "bash scripts/smoke.sh",
        "bash scripts/test.sh",
    ]


def test_checkpoint_and_metric_names_in_the_docs_are_the_codes():
    """Checkpoint dirs are `step_000100` (checkpointing.STEP_PREFIX + 6 digits); Rho-1 logs `excess_loss/*`."""
    from wmtp.train.checkpointing import STEP_PREFIX
    from wmtp.train.objectives import Rho1Objective, VerifiableObjective

    text = "\n".join(path.read_text() for path in doc_files())
    assert STEP_PREFIX == "step_" and "step_000100" in text
    assert not re.search(r"\bstep-N\b|checkpoints/step-", text)

    class Spec:
        class rho1:
            mode = "tokenskip"

    rho1_names = Rho1Objective.declared_metrics(Spec, 4).train
    verifiable_names = VerifiableObjective.declared_metrics(None, 4).train
    assert "excess_loss/mean" in rho1_names and "rho1/kept_fraction" in rho1_names and "td/mean" in verifiable_names
    for documented in re.findall(r"`((?:excess|excess_loss|td|rho1)/[a-z_{},]+)`", text):
        prefix = documented.split("/")[0]
        assert any(name.startswith(prefix + "/") for name in rho1_names + verifiable_names), documented


# ---------------------------------------------------------------- the checker itself


@pytest.mark.parametrize(
    "command, problem",
    [
        ("wmtp train smoke --frobnicate", "train: no option --frobnicate"),
        ("wmtp modle verify storage/models_v2/micro-mtp", "wmtp: no command 'modle'"),
        ("wmtp model frobnicate x", "wmtp model: no command 'frobnicate'"),
        ("wmtp data prepare smoke --max-token 3", "wmtp data prepare smoke: no option --max-token"),
        ("wmtp eval score s.jsonl --n 4", "wmtp eval score: no option --n"),
        ("wmtp image build --dry-run", "wmtp image build: no option --dry-run"),
        ("wmtp logs NAME --target T [--tail 200] [--follw]", "wmtp logs: no option --follw"),
    ],
)
def test_the_checker_refuses_a_made_up_command_or_option(command, problem):
    assert any(problem in found for found in problems_of(command)), problems_of(command)


@pytest.mark.parametrize(
    "command",
    [
        "wmtp train smoke --set train.lr=-1e-3 --dry-run",
        "wmtp eval run <run>/<stage> --n 10 --k 1,10 -b humaneval",
        "wmtp logs NAME --target T [--tail 200] [--follow]",
        "wmtp data …",
        "wmtp sync-storage --dest s3://b/wmtp --progress/--no-progress",
        ".venv/bin/wmtp train verifiable --micro",
    ],
)
def test_the_checker_accepts_real_commands_and_placeholders(command):
    assert problems_of(command) == []


def test_command_lines_are_found_in_blocks_spans_and_continuations():
    text = "\n".join(
        [
            "Run `wmtp train smoke --dry-run` or `wmtp …`; `--stage critic` alone is no command line.",
            "```bash",
            "wmtp eval run MODEL --benchmark humaneval \\",
            "    --n 10 --k 1,10   # a comment --not-an-option",
            "$ bash scripts/smoke.sh && wmtp compare RUN --out out",
            "follow it: wmtp status 1 --target vessl ; wmtp logs 1 --target vessl",
            "building it (wmtp model micro --out storage/models_v2)",
            "torchrun -m wmtp.train smoke   # not the CLI",
            "```",
        ]
    )
    found = [words(line.text) for line in command_lines(text)]
    assert found == [
        ["wmtp", "eval", "run", "MODEL", "--benchmark", "humaneval", "--n", "10", "--k", "1,10"],
        ["wmtp", "compare", "RUN", "--out", "out"],
        ["wmtp", "status", "1", "--target", "vessl"],
        ["wmtp", "logs", "1", "--target", "vessl"],
        ["wmtp", "model", "micro", "--out", "storage/models_v2"],
        ["wmtp", "train", "smoke", "--dry-run"],
        ["wmtp", "…"],
    ]
