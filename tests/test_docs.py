"""README.md and docs/*.md as a newcomer reads them: every relative link (and every repository path quoted in
backticks) resolves, every shell command names a program that exists in the set-up the README describes
(``make install`` into ``.venv``), and the README's Python example runs as written."""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# the environment `make install` creates: .venv/bin/<program> is what the pages call
VENV_BIN = Path(sys.executable).parent
REPOSITORY_FOLDERS = ("slim_diffusers/", "training/", "benchmarks/", "tests/", "hub_cards/", "docs/", ".ci/")
SHELL_BUILTINS = {"cd", "source", "export", "test"}
COREUTILS = {"cp", "mkdir", "ls", "cat"}  # on every machine the README's set-up runs on


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def outside_fences(text: str) -> str:
    """The page without its code blocks (a link or path written in an example is not a link of the page)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, spaces as -."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set:
    found, seen = set(), {}
    for line in outside_fences(page.read_text(encoding="utf-8")).splitlines():
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            n = seen.get(base, 0)
            found.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return found


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) < 12_000
    assert "](docs/app.png)" in readme and (ROOT / "docs" / "app.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("usage", "format", "training", "evaluation", "toy", "speed", "security"):
        assert f"](docs/{name}.md)" in readme, f"the README links docs/{name}.md"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_and_code_paths_resolve(page):
    text = outside_fences(page.read_text(encoding="utf-8"))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto: — not checked offline
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: no heading #{fragment} in {file.relative_to(ROOT)}")
    # repository paths in backticks, e.g. `slim_diffusers/coding/bitstream.py`, are relative to the checkout
    for quoted in re.findall(r"`([^`\s]+)`", text):
        if quoted.startswith(REPOSITORY_FOLDERS) and not re.search(r"[<>*{}|…]", quoted):
            if not (ROOT / quoted.split(":")[0]).exists():
                broken.append(f"`{quoted}`: no such path in the repository")
    assert not broken, f"{page_id(page)}: " + "; ".join(broken)


def shell_commands(page: Path):
    """Each command of the page's ```bash blocks: continuation lines joined, comments dropped, split at ``&&``,
    ``;`` and ``|``."""
    text = page.read_text(encoding="utf-8")
    for block in re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError as err:
                raise AssertionError(f"{page_id(page)}: cannot parse {line!r}: {err}") from None
            command = []
            for word in words + [";"]:
                if word in ("&&", ";", "|", "||"):
                    if command:
                        yield " ".join(command), command
                    command = []
                else:
                    command.append(word)


def make_targets() -> set:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m for line in text.splitlines() for m in re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", line)}


def slim_commands() -> set:
    from slim_diffusers.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def python_target_missing(args) -> str:
    """What ``python ARGS`` (or ``accelerate launch``/``torchrun`` ARGS) would fail to find: a script or module."""
    import importlib.util

    for i, word in enumerate(args):
        if word == "-m":
            module = args[i + 1]
            return "" if importlib.util.find_spec(module) else f"no module {module}"
        if word.endswith(".py"):
            return "" if (ROOT / word).is_file() else f"no script {word}"
    return ""


def program_missing(words) -> str:
    """Why the command in ``words`` would not start in the README's set-up (empty: it would)."""
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
        words = words[1:]
    program, args = words[0], words[1:]
    if program in SHELL_BUILTINS:
        return ""
    if program in COREUTILS:
        return "" if shutil.which(program) else f"{program}: not on this machine"
    if program == "make":
        missing = [t for t in args if not t.startswith("-") and "=" not in t and t not in make_targets()]
        return f"no make target {missing}" if missing else ""
    if program.startswith(".venv/bin/"):
        name = program[len(".venv/bin/"):]
        if not (VENV_BIN / name).exists():
            return f"{program}: not installed by `make install` ({VENV_BIN / name} does not exist)"
        if name == "slim":
            return "" if args and args[0] in slim_commands() else f"no slim command {args[:1]}"
        if name in ("python", "accelerate", "torchrun"):
            return python_target_missing(args)
        return ""
    if program.startswith("./") or "/" in program:
        return "" if (ROOT / program).exists() else f"no such program {program}"
    return (f"{program}: a bare program name; the pages call the installed programs as .venv/bin/{program} "
            "(the set-up the README describes)")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_shell_command_resolves_in_the_readmes_set_up(page):
    problems = [f"{line!r}: {why}" for line, words in shell_commands(page) if (why := program_missing(words))]
    assert not problems, f"{page_id(page)}: " + "; ".join(problems)


def test_the_shell_block_check_catches_bare_and_missing_programs():
    assert "bare program name" in program_missing(["accelerate", "launch", "training/train_stage1.py"])
    assert "no script" in program_missing([".venv/bin/python", "benchmarks/no_such.py"])
    assert "no module" in program_missing([".venv/bin/python", "-m", "slim_diffusers.no_such"])
    assert "no slim command" in program_missing([".venv/bin/slim", "squash"])
    assert "no make target" in program_missing(["make", "docs-that-do-not-exist"])
    assert program_missing(["HF_HUB_OFFLINE=1", ".venv/bin/slim", "demo"]) == ""
    assert slug("The `.slim` file format") == "the-slim-file-format" and slug("Speed (2 cores)") == "speed-2-cores"


def test_the_readmes_python_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"^```python\n(.*?)^```", readme, flags=re.S | re.M).group(1)
    assert len(example.strip().splitlines()) <= 12
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    written = (tmp_path / "star.slim").stat().st_size
    assert f"{written} bytes" in done.stdout
