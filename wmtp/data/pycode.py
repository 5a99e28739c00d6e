"""Python sources (default: this interpreter's standard library) → `<out>/processed/{train,valid,test}.jsonl`.

A real code corpus on every machine, with no download: `prepare_pycode(out)` walks a folder of `.py`
files and turns every function and method into one Alpaca record.

- **Which definitions**: every `def` / `async def` at module level or in a class body (methods, and
  methods of nested classes: `Outer.Inner.method`), also under module/class-level `if` / `try` / `with`
  / `for` / `while` / `match` blocks. A class is not a record of its own (its methods are: a class record
  would repeat them). A function nested in a function stays part of its parent's body.
- **Record**: `instruction` = the decorators, the signature and the docstring, exactly as written
  (comments between them included); `output` = the rest of the body. `instruction + output` is the
  definition's text, so a model that continues the prompt writes the body. `input` = "" (the file is
  in `task_id` and `metadata.file`).
- **Dedent**: a method (any def not at column 0) is shifted left by its `def` line's indentation, on every
  line that starts with it, except continuation lines of a multi-line string other than the docstring,
  which stay as they are so every string value is unchanged. The docstring is shifted with the code
  when all its lines have the indentation (its `inspect.cleandoc` text is then unchanged).
  `ast.parse(instruction + output)` gives the original definition.
- **Kept / dropped** (every drop counted by reason, in the split of its file): functions with and without a
  docstring are kept (without one the prompt is the signature alone; `metadata.has_docstring` tells them
  apart; `require_docstring` drops them). Dropped: trivial bodies (only `pass`, `...`,
  `raise NotImplementedError`, or the docstring alone), one-line defs (the body on the signature's or
  the docstring's line), records over the token budget, files that are not UTF-8 or do not parse.
- **Skipped files** (not drops: not code we want; counted in the notes and the metadata): test folders
  (`test/`, `tests/`, `idle_test/`), `test_*.py`, `site-packages/`, `dist-packages/`, `__pycache__/`.
- **Split by file**: sha256 of the path relative to the source folder → train 90 % / valid 5 % /
  test 5 %, so no function of a held-out file is in train, and the same file always lands in the
  same split (whatever the folder's location or the other files).
- **difficulty** 1..11 from the body's length in characters (`DIFFICULTY_EDGES`: the deciles of the
  CPython 3.11 standard library, fixed so a record's difficulty never depends on the other files),
  which fills the default curriculum bins (low 1–3, medium 4–7, high 8–11).
- **Prepared once**: the split metadata stores the source folder, the SHA-256 of the selected files
  (paths and contents), the tokenizer's SHA-256 and the options; a later call with the same ones reuses
  the prepared splits (their index must load) and writes nothing; `force=True` rebuilds.
"""

from __future__ import annotations

import ast
import bisect
import contextlib
import hashlib
import io
import os
import sysconfig
import token
import tokenize
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from wmtp.common.files import file_sha256
from wmtp.common.progress import progress_bar
from wmtp.data.index import DatasetIndex
from wmtp.data.prepare import make_budget, processed_path
from wmtp.data.schema import DataError, make_record
from wmtp.data.writer import PreparationReport, SplitReport, SplitWriter, TokenBudget

SOURCE = "pycode"
FORMAT = 1  # bump when the records change: a prepared set of another format is rebuilt, never reused
SPLIT_SHARES = (("train", 0.90), ("valid", 0.05), ("test", 0.05))
SPLITS = tuple(name for name, _ in SPLIT_SHARES)
DEFAULT_MAX_TOKENS = 1024  # the micro model's context (max_seq_len)
# Body length (characters) → difficulty: `1 + number of edges ≤ length`; the deciles over the functions
# and methods of CPython 3.11's standard library, so there each difficulty 1..11 holds about a tenth.
DIFFICULTY_EDGES = (30, 46, 62, 87, 122, 168, 237, 339, 516, 931)

TEST_DIRS = ("test", "tests", "idle_test")
PACKAGE_DIRS = ("site-packages", "dist-packages")
SKIP_REASONS = {
    "test": "in a test folder (test/, tests/, idle_test/)",
    "test_file": "named test_*.py",
    "packages": "in site-packages/ or dist-packages/",
}

DROP_NOT_UTF8 = "file is not UTF-8 (file skipped)"
DROP_NO_PARSE = "file does not parse with this Python (file skipped)"
DROP_TRIVIAL = "trivial body (pass, ..., raise NotImplementedError, or the docstring alone)"
DROP_ONE_LINE = "one-line def (body on the signature's or the docstring's line)"
DROP_NO_DOCSTRING = "no docstring (--require-docstring)"


def default_src() -> Path:
    """The running interpreter's standard library source folder."""
    return Path(sysconfig.get_paths()["stdlib"])


# ----------------------------------------------------------------------------- choosing the files


@dataclass
class Selection:
    """The `.py` files to read (sorted by relative path) and the files skipped by rule, by reason."""

    root: Path
    files: list[tuple[str, Path]] = field(default_factory=list)  # (relative posix path, path)
    skipped: Counter = field(default_factory=Counter)  # SKIP_REASONS key → files

    def sha256(self) -> str:
        """Identity of the selected sources: their relative paths and contents."""
        digest = hashlib.sha256()
        for rel, path in self.files:
            digest.update(rel.encode("utf-8") + b"\0" + file_sha256(path).encode() + b"\n")
        return digest.hexdigest()


def count_py_files(directory: str) -> int:
    return sum(name.endswith(".py") for _, _, names in os.walk(directory) for name in names)


def select_files(src: Path, limit: int | None = None) -> Selection:
    """Walk `src` in sorted order; skip test folders, `test_*.py`, site-packages; keep the first `limit`."""
    selection = Selection(src)
    for directory, dirs, names in os.walk(src):
        kept_dirs = []
        for name in sorted(dirs):
            if name in TEST_DIRS:
                selection.skipped["test"] += count_py_files(os.path.join(directory, name))
            elif name in PACKAGE_DIRS:
                selection.skipped["packages"] += count_py_files(os.path.join(directory, name))
            elif name != "__pycache__" and not name.startswith("."):
                kept_dirs.append(name)
        dirs[:] = kept_dirs
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            if name.startswith("test_"):
                selection.skipped["test_file"] += 1
                continue
            path = Path(directory) / name
            selection.files.append((path.relative_to(src).as_posix(), path))
    selection.files.sort()
    if limit is not None:
        selection.files = selection.files[:limit]
    return selection


def split_of(rel: str) -> str:
    """The split of a file: sha256 of its relative path as a number in [0, 1) against the cumulative shares."""
    point = int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big") / 2**64
    cumulative = 0.0
    for name, share in SPLIT_SHARES:
        cumulative += share
        if point < cumulative:
            return name
    return SPLIT_SHARES[-1][0]


# ----------------------------------------------------------------------------- one file → records


def read_source(path: Path) -> str | None:
    """The file's text with `\\n` line ends (no BOM), or None when it is not UTF-8."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def iter_defs(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str]]:
    """`(node, qualname)` of the functions and methods in a module or class body, in source order."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield stmt, prefix + stmt.name
        elif isinstance(stmt, ast.ClassDef):
            yield from iter_defs(stmt.body, f"{prefix}{stmt.name}.")
        else:  # if / try / with / for / while / match at this level: their blocks hold definitions too
            for block in ("body", "orelse", "finalbody"):
                if isinstance(getattr(stmt, block, None), list):
                    yield from iter_defs(getattr(stmt, block), prefix)
            for handler in getattr(stmt, "handlers", None) or []:
                yield from iter_defs(handler.body, prefix)
            for case in getattr(stmt, "cases", None) or []:
                yield from iter_defs(case.body, prefix)


class SourceFile:
    """One parsed file: its lines, tree and tokens, and the rows that begin inside a multi-line string."""

    def __init__(self, text: str, rel: str):
        self.rel = rel
        self.lines = text.split("\n")  # as `ast` counts lines (str.splitlines would also split on \f, \x1c, …)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning: invalid escape sequences in old code
            self.tree = ast.parse(text, filename=rel)
            self.tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        self.def_token_index = {
            t.start: i for i, t in enumerate(self.tokens) if t.type == token.NAME and t.string == "def"
        }
        self.def_positions = sorted(self.def_token_index)
        self.string_rows = self._rows_inside_strings()

    def _rows_inside_strings(self) -> set[int]:
        """Rows (1-based) whose start lies inside a string token (or, from Python 3.12, an f-string)."""
        rows: set[int] = set()
        fstring_start = getattr(token, "FSTRING_START", None)
        fstring_end = getattr(token, "FSTRING_END", None)
        open_fstrings: list[int] = []
        for tok in self.tokens:
            if tok.end[0] > tok.start[0]:
                rows.update(range(tok.start[0] + 1, tok.end[0] + 1))
            if fstring_start is not None and tok.type == fstring_start:
                open_fstrings.append(tok.start[0])
            elif fstring_end is not None and tok.type == fstring_end and open_fstrings:
                rows.update(range(open_fstrings.pop() + 1, tok.end[0] + 1))
        return rows

    def colon_row(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
        """The row of the `:` that ends the signature (the first `:` outside brackets after `def`)."""
        i = bisect.bisect_left(self.def_positions, (node.lineno, node.col_offset))
        depth = 0
        for tok in self.tokens[self.def_token_index[self.def_positions[i]] :]:
            if tok.type == token.OP:
                if tok.string in ("(", "[", "{"):
                    depth += 1
                elif tok.string in (")", "]", "}"):
                    depth -= 1
                elif tok.string == ":" and depth == 0:
                    return tok.start[0]
        raise DataError(f"{self.rel}:{node.lineno}: no ':' after the signature of {node.name}")  # not valid Python

    def text(self, first: int, last: int, indent: str, verbatim: set[int]) -> str:
        """Rows `first..last` (1-based, inclusive) less `indent`, rows in `verbatim` as they are; ends with \\n."""
        rows = []
        for row in range(first, last + 1):
            line = self.lines[row - 1]
            rows.append(line[len(indent) :] if indent and row not in verbatim and line.startswith(indent) else line)
        return "\n".join(rows) + "\n"


def docstring_node(node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.Expr | None:
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def is_trivial(statements: list[ast.stmt]) -> bool:
    """Nothing but `pass`, `...` and `raise NotImplementedError[(…)]` (or nothing at all)."""

    def trivial(stmt: ast.stmt) -> bool:
        if isinstance(stmt, ast.Pass):
            return True
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and stmt.value.value is Ellipsis:
            return True
        if isinstance(stmt, ast.Raise) and stmt.exc is not None:
            exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
            return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
        return False

    return all(trivial(stmt) for stmt in statements)


def length_difficulty(n_chars: int) -> int:
    """1..11: one more than the number of `DIFFICULTY_EDGES` the body's length reaches."""
    return 1 + bisect.bisect_right(DIFFICULTY_EDGES, n_chars)


def def_record(
    source: SourceFile,
    node: ast.FunctionDef | ast.AsyncFunctionDef,
    task_id: str,
    qualname: str,
    require_docstring: bool,
) -> dict | str:
    """The record of one definition, or the reason it is dropped."""
    doc = docstring_node(node)
    if doc is None and require_docstring:
        return DROP_NO_DOCSTRING
    statements = node.body[1:] if doc is not None else node.body
    if is_trivial(statements):
        return DROP_TRIVIAL
    colon_row = source.colon_row(node)
    prompt_end = doc.end_lineno if doc is not None else colon_row
    if (doc is not None and doc.lineno <= colon_row) or statements[0].lineno <= prompt_end:
        return DROP_ONE_LINE
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    def_line = source.lines[node.lineno - 1]
    indent = def_line[: len(def_line) - len(def_line.lstrip())]
    verbatim = set(source.string_rows)
    if doc is not None:
        doc_rows = range(doc.lineno + 1, doc.end_lineno + 1)
        lines = source.lines
        if all(lines[r - 1].startswith(indent) or not lines[r - 1].strip() for r in doc_rows):
            verbatim.difference_update(doc_rows)  # the docstring moves with the code
    instruction = source.text(first, prompt_end, indent, verbatim)
    output = source.text(prompt_end + 1, node.end_lineno, indent, verbatim)
    return make_record(
        instruction,
        "",
        output,
        task_id,
        True,
        SOURCE,
        length_difficulty(len(output)),
        False,
        file=source.rel,
        qualname=qualname,
        line=first,
        has_docstring=doc is not None,
    )


def file_records(path: Path, rel: str, require_docstring: bool = False) -> Iterator[dict | str]:
    """Records of one file, and a drop reason (str) in place of each one dropped (or of the whole file)."""
    text = read_source(path)
    if text is None:
        yield DROP_NOT_UTF8
        return
    try:
        source = SourceFile(text, rel)
    except (SyntaxError, ValueError, RecursionError, MemoryError, tokenize.TokenError):
        yield DROP_NO_PARSE
        return
    seen: Counter = Counter()
    for node, qualname in iter_defs(source.tree.body):
        seen[qualname] += 1
        suffix = f"#{seen[qualname]}" if seen[qualname] > 1 else ""  # redefinitions: `f`, `f#2`, … in file order
        yield def_record(source, node, f"{rel}::{qualname}{suffix}", qualname, require_docstring)


# ----------------------------------------------------------------------------- the splits


@dataclass
class PycodeReport(PreparationReport):
    reused: bool = False


def preparation_settings(
    src: Path, selection: Selection, budget: TokenBudget, limit: int | None, require_docstring: bool
) -> dict:
    """What the splits were prepared from (stored under `preparation`; equal settings → reuse)."""
    tokenizer_sha256 = None
    if budget.tokenizer is not None and Path(getattr(budget.tokenizer, "path", "")).is_file():
        tokenizer_sha256 = file_sha256(budget.tokenizer.path)
    return {
        "source": SOURCE,
        "raw": str(src.resolve()),
        "max_tokens": budget.max_tokens,
        "pycode": {
            "format": FORMAT,
            "files": len(selection.files),
            "files_sha256": selection.sha256(),
            "skipped_files": {SKIP_REASONS[key]: n for key, n in sorted(selection.skipped.items())},
            "limit": limit,
            "require_docstring": require_docstring,
            "split_shares": {name: share for name, share in SPLIT_SHARES},
            "difficulty_edges": list(DIFFICULTY_EDGES),
            "tokenizer": None if budget.tokenizer is None else str(Path(budget.tokenizer.path).resolve()),
            "tokenizer_sha256": tokenizer_sha256,
        },
    }


def reuse_report(out_dir: Path, settings: dict) -> PycodeReport | None:
    """The report of the splits already in `out_dir` when all load and were prepared with `settings`."""
    report = PycodeReport(SOURCE, reused=True)
    for split in SPLITS:
        path = processed_path(out_dir, split)
        try:
            metadata = DatasetIndex.load(path).metadata
        except DataError:
            return None
        preparation = metadata.get("preparation") or {}
        if any(preparation.get(key) != value for key, value in settings.items()):
            return None
        report.splits[split] = SplitReport(
            path, preparation.get("kept", 0), preparation.get("n_correct", 0), Counter(preparation.get("dropped") or {})
        )
    report.notes.append(
        f"reused {Path(out_dir) / 'processed'}: prepared from the same {settings['pycode']['files']} "
        f"files of {settings['raw']} with the same options (--force rebuilds)"
    )
    return report


def prepare_pycode(
    out_dir: str | Path,
    src: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    limit: int | None = None,
    require_docstring: bool = False,
    force: bool = False,
    show_progress: bool = False,
) -> PycodeReport:
    """Functions and methods of the `.py` files under `src` → `<out>/processed/{train,valid,test}.jsonl` + index."""
    src = Path(src) if src is not None else default_src()
    out_dir = Path(out_dir)
    if not src.is_dir():
        raise DataError(f"{src}: not a directory (expected a folder of Python sources, e.g. {default_src()})")
    if limit is not None and limit < 1:
        raise DataError(f"--limit: {limit}; expected at least 1 (source files to read)")
    selection = select_files(src, limit)
    if not selection.files:
        raise DataError(f"{src}: no .py files outside test folders and site-packages")
    budget = make_budget(tokenizer_dir, max_tokens)
    settings = preparation_settings(src, selection, budget, limit, require_docstring)
    if not force and (reused := reuse_report(out_dir, settings)) is not None:
        return reused
    report = PycodeReport(SOURCE)
    files_per_split = Counter(split_of(rel) for rel, _ in selection.files)
    with contextlib.ExitStack() as stack:
        writers = {
            split: stack.enter_context(SplitWriter(processed_path(out_dir, split), budget, {"preparation": settings}))
            for split in SPLITS
        }
        description = f"pycode: {len(selection.files)} files of {src}"
        with progress_bar(description, len(selection.files), show_progress) as advance:
            for rel, path in selection.files:
                writer = writers[split_of(rel)]
                for item in file_records(path, rel, require_docstring):
                    if isinstance(item, str):
                        writer.drop(item)
                    else:
                        writer.add(item)
                advance(1)
    report.splits = {split: writers[split].report for split in SPLITS}
    report.notes.append(
        f"read {len(selection.files)} files of {src} (split by file: "
        + ", ".join(f"{split} {files_per_split[split]}" for split in SPLITS)
        + ")"
    )
    if selection.skipped:
        report.notes.append(
            "skipped " + ", ".join(f"{n} files {SKIP_REASONS[key]}" for key, n in sorted(selection.skipped.items()))
        )
    return report
