"""`wmtp data prepare pycode`: functions and methods of Python sources as records, split by file, reused.

A small source tree written by the tests (decorators, async def, methods, nested classes and functions,
multi-line strings, a syntax error, a Latin-1 file, test folders and files that must be skipped), then
the real standard library (`json/`, and the first files of the default source).
"""

from __future__ import annotations

import ast
import copy
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wmtp.data.index import DatasetIndex
from wmtp.data.prepare import processed_path
from wmtp.data.pycode import (
    DIFFICULTY_EDGES,
    DROP_NO_DOCSTRING,
    DROP_NO_PARSE,
    DROP_NOT_UTF8,
    DROP_ONE_LINE,
    DROP_TRIVIAL,
    SPLITS,
    default_src,
    file_records,
    iter_defs,
    length_difficulty,
    prepare_pycode,
    split_of,
)
from wmtp.data.schema import DataError, parse_line
from wmtp.data.validate import validate_dir
from wmtp_cli.main import app

SHAPES = '''\
"""Shapes."""
import functools


def area(w, h):
    """Area of a w x h rectangle."""
    return w * h


@functools.lru_cache(maxsize=None)
# the cache makes it linear
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


async def fetch(url,
                timeout=10):  # a signature over two lines
    """Fetch `url`."""
    return await get(url, timeout)


class Shape:
    """A shape."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def label(self):
        """The label,
        shown to users.
        """
        text = """keep
        this indentation
exactly"""
        return self.name + text

    def abstract(self):
        """Subclasses implement this."""
        raise NotImplementedError("abstract")

    def stub(self): ...

    class Inner:
        def method(self, d={"a": 1,
                            "b": 2}):
            def helper():
                return 1
            return helper() + len(d)


def one_liner(): return 1


if True:
    def cond():
        return 1
else:
    def cond():
        return 2
'''

EXPECTED_IDS = ["area", "fib", "fetch", "Shape.__init__", "Shape.label", "Shape.Inner.method", "cond", "cond#2"]


def write_tree(root: Path) -> Path:
    """A source tree: one good module, one empty, one broken, one Latin-1, and files that must be skipped."""
    files = {
        "pkg/__init__.py": "",
        "pkg/shapes.py": SHAPES,
        "pkg/util.py": "def double(x):\n    '''Twice x.'''\n    return 2 * x\n\n\ndef nothing():\n    pass\n",
        "broken.py": "def f(:\n    return 1\n",
        "pkg/tests/test_shapes.py": "def test_area():\n    assert True\n",
        "pkg/test/helpers.py": "def helper():\n    return 1\n",
        "test_top.py": "def test_top():\n    assert True\n",
        "site-packages/thirdparty.py": "def vendored():\n    return 1\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\ns = '\xe9'\n\ndef g():\n    return s\n")
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return write_tree(tmp_path / "src")


def read_records(out: Path) -> dict[str, list[dict]]:
    return {
        split: [json.loads(line) for line in processed_path(out, split).read_text(encoding="utf-8").splitlines()]
        for split in SPLITS
    }


def by_task(out: Path) -> dict[str, dict]:
    return {r["task_id"]: r for records in read_records(out).values() for r in records}


def without_docstring_indent(node: ast.AST) -> str:
    """`ast.dump` with the docstring's lines stripped: the only text the dedent may change is its indentation."""
    node = copy.deepcopy(node)
    doc = ast.get_docstring(node, clean=False)
    if doc is not None:
        node.body[0].value.value = "\n".join(line.strip() for line in doc.strip().split("\n"))
    return ast.dump(node)


def assert_reconstructs(record: dict, node: ast.AST) -> None:
    """The prompt followed by the output parses back to the very definition (up to the docstring's indentation)."""
    parsed = ast.parse(record["instruction"] + record["output"]).body
    assert len(parsed) == 1, record["task_id"]
    assert without_docstring_indent(parsed[0]) == without_docstring_indent(node), record["task_id"]


def defs_of(path: Path, rel: str) -> dict[str, ast.AST]:
    """task id → node of every definition in a file, numbered like the preparer numbers redefinitions."""
    nodes, seen = {}, Counter()
    for node, qualname in iter_defs(ast.parse(path.read_text(encoding="utf-8")).body):
        seen[qualname] += 1
        nodes[f"{rel}::{qualname}" + (f"#{seen[qualname]}" if seen[qualname] > 1 else "")] = node
    return nodes


# ----------------------------------------------------------------------------- records


def test_records_are_functions_and_methods_with_qualified_task_ids(tree):
    items = list(file_records(tree / "pkg/shapes.py", "pkg/shapes.py"))
    records = [item for item in items if isinstance(item, dict)]
    assert [r["task_id"] for r in records] == [f"pkg/shapes.py::{name}" for name in EXPECTED_IDS]
    assert Counter(item for item in items if isinstance(item, str)) == {DROP_TRIVIAL: 2, DROP_ONE_LINE: 1}
    for record in records:
        assert parse_line(json.dumps(record).encode(), "x", 1) == record  # a valid Alpaca record
        meta = record["metadata"]
        assert record["input"] == "" and record["is_correct"] is True
        assert meta["source"] == "pycode" and meta["has_tests"] is False and meta["file"] == "pkg/shapes.py"
        assert record["task_id"].startswith(f"pkg/shapes.py::{meta['qualname']}")
        assert meta["difficulty"] == length_difficulty(len(record["output"]))
    nested = records[EXPECTED_IDS.index("Shape.Inner.method")]
    assert "def helper():" in nested["output"]  # a nested function is part of its parent's body, not a record


def test_prompt_plus_output_is_the_definition(tree):
    records = {
        r["task_id"].split("::")[1]: r
        for r in file_records(tree / "pkg/shapes.py", "pkg/shapes.py")
        if isinstance(r, dict)
    }
    area, fib, fetch, label = records["area"], records["fib"], records["fetch"], records["Shape.label"]
    assert area["instruction"] == 'def area(w, h):\n    """Area of a w x h rectangle."""\n'
    assert area["output"] == "    return w * h\n"
    assert fib["instruction"] == ("@functools.lru_cache(maxsize=None)\n# the cache makes it linear\ndef fib(n):\n")
    assert fib["metadata"]["has_docstring"] is False and fib["metadata"]["line"] == 10
    assert fetch["instruction"] == (
        'async def fetch(url,\n                timeout=10):  # a signature over two lines\n    """Fetch `url`."""\n'
    )
    # A method moves left by 4, its docstring with it; the other string's continuation lines stay as they are.
    assert label["instruction"] == '@property\ndef label(self):\n    """The label,\n    shown to users.\n    """\n'
    assert label["output"] == (
        '    text = """keep\n        this indentation\nexactly"""\n    return self.name + text\n'
    )
    method = records["Shape.Inner.method"]
    assert method["instruction"] == 'def method(self, d={"a": 1,\n' + " " * 20 + '"b": 2}):\n'  # 28 - 8 spaces
    nodes = defs_of(tree / "pkg/shapes.py", "pkg/shapes.py")
    for task_id, record in ((r["task_id"], r) for r in records.values()):
        assert_reconstructs(record, nodes[task_id])
    assert (
        ast.literal_eval(label["output"].split("=", 1)[1].split("\n    return")[0].strip())
        == "keep\n        this indentation\nexactly"
    )  # the string's value is unchanged


def test_difficulty_is_fixed_by_body_length():
    assert length_difficulty(0) == 1
    assert length_difficulty(DIFFICULTY_EDGES[0] - 1) == 1 and length_difficulty(DIFFICULTY_EDGES[0]) == 2
    assert length_difficulty(DIFFICULTY_EDGES[-1]) == 11 and length_difficulty(10**6) == 11


def test_split_is_by_file_deterministic_and_about_90_5_5():
    counts = Counter(split_of(f"pkg{i}/module_{i}.py") for i in range(20_000))
    assert abs(counts["train"] / 20_000 - 0.90) < 0.01
    assert abs(counts["valid"] / 20_000 - 0.05) < 0.01 and abs(counts["test"] / 20_000 - 0.05) < 0.01
    assert split_of("json/decoder.py") == split_of("json/decoder.py")


# ----------------------------------------------------------------------------- preparing a folder


def test_prepare_writes_indexed_splits_by_file_and_counts_drops(tree, tmp_path):
    out = tmp_path / "out"
    report = prepare_pycode(out, tree)
    assert not report.reused
    records = read_records(out)
    files = {}
    for split, rows in records.items():
        for row in rows:
            assert split_of(row["metadata"]["file"]) == split  # every function of a file in its file's split
            files.setdefault(row["metadata"]["file"], set()).add(split)
        index = DatasetIndex.load(processed_path(out, split))  # the index beside every split, fresh
        assert len(index) == len(rows) == report.splits[split].kept
    assert set(files) == {"pkg/shapes.py", "pkg/util.py"}  # nothing from tests/, test/, test_*.py, site-packages
    assert all(len(splits) == 1 for splits in files.values())
    drops = sum((split.dropped for split in report.splits.values()), Counter())
    assert drops == {DROP_TRIVIAL: 3, DROP_ONE_LINE: 1, DROP_NO_PARSE: 1, DROP_NOT_UTF8: 1}
    assert drops[DROP_NO_PARSE] == report.splits[split_of("broken.py")].dropped[DROP_NO_PARSE]
    meta = json.loads((out / "processed" / "train_metadata.json").read_text())["preparation"]
    assert meta["source"] == "pycode" and meta["pycode"]["files"] == 5
    assert meta["pycode"]["skipped_files"] == {
        "in a test folder (test/, tests/, idle_test/)": 2,
        "named test_*.py": 1,
        "in site-packages/ or dist-packages/": 1,
    }
    assert all(check.ok for check in validate_dir(out))
    assert any("skipped" in note for note in report.notes)


def test_same_split_wherever_the_folder_is_and_byte_identical_reruns(tree, tmp_path):
    prepare_pycode(tmp_path / "a", tree)
    moved = shutil.copytree(tree, tmp_path / "elsewhere" / "src")
    prepare_pycode(tmp_path / "b", moved)
    for split in SPLITS:
        assert processed_path(tmp_path / "a", split).read_bytes() == processed_path(tmp_path / "b", split).read_bytes()


def test_require_docstring_drops_the_others(tree, tmp_path):
    report = prepare_pycode(tmp_path / "out", tree, require_docstring=True)
    drops = sum((split.dropped for split in report.splits.values()), Counter())
    # fib, Shape.__init__, Shape.Inner.method, cond, cond#2, and (checked first) stub, one_liner, util.nothing
    assert drops[DROP_NO_DOCSTRING] == 8 and drops[DROP_TRIVIAL] == 1 and DROP_ONE_LINE not in drops  # + abstract
    assert all(r["metadata"]["has_docstring"] for r in by_task(tmp_path / "out").values())


def test_reused_without_force_rebuilt_with_it_or_when_anything_changes(tree, tmp_path):
    out = tmp_path / "out"
    prepare_pycode(out, tree)
    paths = [p for split in SPLITS for p in processed_path(out, split).parent.glob(f"{split}*")]
    stats = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}

    again = prepare_pycode(out, tree)
    assert again.reused and any("reused" in note for note in again.notes)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths} == stats  # nothing rewritten
    assert {s: r.kept for s, r in again.splits.items()} == {s: len(rows) for s, rows in read_records(out).items()}
    assert sum(again.splits[s].dropped[DROP_NO_PARSE] for s in SPLITS) == 1  # the drop report, from the metadata

    forced = prepare_pycode(out, tree, force=True)
    assert not forced.reused
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) != stats[p] for p in paths)

    for change in (dict(require_docstring=True), dict(limit=2)):  # other options: rebuilt
        assert not prepare_pycode(out, tree, **change).reused
    assert not prepare_pycode(out, tree).reused
    (tree / "pkg/util.py").write_text("def double(x):\n    return x + x\n")  # another source: rebuilt
    assert not prepare_pycode(out, tree).reused
    assert prepare_pycode(out, tree).reused
    processed_path(out, split_of("pkg/shapes.py")).write_text("")  # a split changed after indexing: rebuilt
    assert not prepare_pycode(out, tree).reused


def test_bad_source_and_limit_are_named(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        prepare_pycode(tmp_path / "out", tmp_path / "missing")
    (tmp_path / "empty" / "tests").mkdir(parents=True)
    (tmp_path / "empty" / "tests" / "test_a.py").write_text("x = 1\n")
    with pytest.raises(DataError, match="no .py files"):
        prepare_pycode(tmp_path / "out", tmp_path / "empty")
    with pytest.raises(DataError, match="--limit"):
        prepare_pycode(tmp_path / "out", tmp_path / "empty", limit=0)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the real standard library


def test_stdlib_json_package_reconstructs_every_definition(tmp_path):
    src = default_src() / "json"
    report = prepare_pycode(tmp_path / "out", src)
    records = by_task(tmp_path / "out")
    assert sum(split.kept for split in report.splits.values()) == len(records) > 20
    nodes = {}
    for path in sorted(src.glob("*.py")):
        nodes.update(defs_of(path, path.name))
    assert "decoder.py::JSONDecoder.decode" in records
    for task_id, record in records.items():
        assert_reconstructs(record, nodes[task_id])
    assert all(check.ok for check in validate_dir(tmp_path / "out"))


def test_default_source_is_the_stdlib_with_a_file_limit(tmp_path):
    report = prepare_pycode(tmp_path / "out", limit=3)
    meta = json.loads((tmp_path / "out" / "processed" / "train_metadata.json").read_text())["preparation"]
    assert Path(meta["raw"]) == default_src().resolve() and meta["pycode"]["files"] == 3
    assert sum(split.kept for split in report.splits.values()) > 0


# ----------------------------------------------------------------------------- the command


def test_cli_prepare_pycode_reports_reuses_and_validates(tree, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["data", "prepare", "pycode", "--src", str(tree), "--out", str(out), "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "pycode: prepared splits" in first.output and "reused" not in first.output
    assert DROP_NO_PARSE in first.output and DROP_NOT_UTF8 in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "reused" in second.output and "--force rebuilds" in second.output
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0 and "reused" not in forced.output
    assert runner.invoke(app, ["data", "validate", str(out), "--no-progress"]).exit_code == 0
    assert "pycode" in runner.invoke(app, ["data", "prepare", "--help"]).output
    bad = runner.invoke(app, ["data", "prepare", "pycode", "--src", str(tmp_path / "nope"), "--out", str(out)])
    assert bad.exit_code == 2 and "not a directory" in bad.output and "Traceback" not in bad.output


def test_token_budget_with_the_micro_tokenizer(tree, tmp_path, micro_models):
    out = tmp_path / "out"
    report = prepare_pycode(out, tree, tokenizer_dir=micro_models["micro-mtp"], max_tokens=120)
    drops = sum((split.dropped for split in report.splits.values()), Counter())
    assert drops["over the token budget (> 120 tokens)"] > 0  # the Alpaca template alone is ~60 tokens
    index = DatasetIndex.load(processed_path(out, split_of("pkg/shapes.py")))
    assert 0 < index.n_tokens.min() and index.n_tokens.max() <= 120
    assert prepare_pycode(out, tree, tokenizer_dir=micro_models["micro-mtp"], max_tokens=120).reused
    assert not prepare_pycode(out, tree, tokenizer_dir=micro_models["micro-mtp"], max_tokens=121).reused
    assert not prepare_pycode(out, tree, max_tokens=121).reused  # no tokenizer now: rebuilt
