"""The engine stays readable in one sitting: no function in textgen/engine/ over 40 lines (decorators
and docstrings included, as a reader sees them), and core.py, the loop everyone reads first, within
260 lines."""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "textgen" / "engine"
MAX_FUNCTION_LINES = 40
MAX_CORE_LINES = 260


def function_lengths():
    for path in sorted(ENGINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                yield f"{path.name}:{node.lineno} {node.name}", node.end_lineno - first + 1


def test_the_engine_package_is_where_this_test_looks():
    assert {"core.py", "batch.py", "sampling.py"} <= {p.name for p in ENGINE.glob("*.py")}


def test_no_engine_function_is_over_40_lines():
    long = {name: lines for name, lines in function_lengths() if lines > MAX_FUNCTION_LINES}
    assert not long, f"over {MAX_FUNCTION_LINES} lines: {long}"


def test_core_is_at_most_260_lines():
    lines = len((ENGINE / "core.py").read_text().splitlines())
    assert lines <= MAX_CORE_LINES, f"engine/core.py has {lines} lines"
