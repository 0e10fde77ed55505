"""Diff the ported examples against bert4keras' originals.

    python examples/port/diff_original.py BERT4KERAS [SCRIPT ...]

BERT4KERAS is a checkout of https://github.com/bojone/bert4keras (or its bare git
directory, read at HEAD). Each original is first put in the house style the ports are
kept in (`ruff format` and ruff's import sorting, with this repository's pyproject.toml),
so the unified diff shows only what the port changed. `--stat` prints the changed line
counts only.
"""

import argparse
import difflib
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PYPROJECT = os.path.join(HERE, os.pardir, os.pardir, "pyproject.toml")


def ports():
    return sorted(f for f in os.listdir(HERE) if f.startswith(("basic_", "task_")))


def original_text(bert4keras, name):
    path = os.path.join(bert4keras, "examples", name)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    return subprocess.run(
        ["git", f"--git-dir={bert4keras}", "show", f"HEAD:examples/{name}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def house_style(text):
    """`text` after ruff's import sorting and `ruff format`, configured as this repository."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "original.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        ruff = [sys.executable, "-m", "ruff"]
        config = ["--config", os.path.abspath(PYPROJECT)]
        subprocess.run(
            [*ruff, "check", "--select", "I", "--fix", "--quiet", *config, path], check=False
        )
        subprocess.run([*ruff, "format", "--quiet", *config, path], check=True)
        with open(path, encoding="utf-8") as f:
            return f.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("bert4keras", help="bert4keras checkout or bare git directory")
    parser.add_argument("scripts", nargs="*", help="port file names (default: all)")
    parser.add_argument("--stat", action="store_true", help="changed line counts only")
    args = parser.parse_intermixed_args()
    for name in args.scripts or ports():
        name = os.path.basename(name)
        original = house_style(original_text(args.bert4keras, name)).splitlines(keepends=True)
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            port = f.read().splitlines(keepends=True)
        diff = list(difflib.unified_diff(original, port, f"bert4keras/examples/{name}", name))
        if args.stat:
            removed = sum(1 for d in diff if d.startswith("-") and not d.startswith("---"))
            added = sum(1 for d in diff if d.startswith("+") and not d.startswith("+++"))
            print(f"{name}: -{removed} +{added} lines (of {len(original)})")
        else:
            sys.stdout.writelines(diff)


if __name__ == "__main__":
    main()
