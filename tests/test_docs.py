"""The user documentation: the README stays short and starts with the two commands, every link in the
README and docs/ resolves inside the repository, and every `labelqa` command the README names exists."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from harness.commands import labelqa_cmd, labelqa_env
from tests.conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
TWO_COMMANDS = [
    "bash deploy/bootstrap.sh && .venv/bin/labelqa demo            # run the demo on embedded defaults",
    "bash deploy/bootstrap.sh && .venv/bin/python -m pytest -q tests  # run the test suite",
]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans (links are only links outside code)."""
    return _SPAN.sub("", _FENCE.sub("", text))


def _links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text(encoding="utf-8")))


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    s = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


@cache
def _anchors(path: Path) -> frozenset[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return frozenset(_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M))


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; keep it under 160 (details go to docs/)"
    first_block = lines[lines.index("```bash") + 1:]
    first_block = first_block[: first_block.index("```")]
    assert first_block == TWO_COMMANDS
    assert lines.index("```bash") < 10, "the two commands come first"
    ci = (REPO / ".ci" / "run").read_text()
    assert TWO_COMMANDS[1].split("  #")[0] in ci, "CI runs the README's test command"


def test_readme_links_stay_inside_the_repository():
    text = README.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text), "no web links in the README"
    outside = [u for u in _links(README) if u.startswith("../") or u.startswith("/")]
    assert not outside, f"links leaving the repository: {outside}"


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path):
    broken = []
    for url in _links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", url):  # http:, mailto:, file: ... are not files of this repo
            continue
        target, _, anchor = url.partition("#")
        dest = (doc.parent / target).resolve() if target else doc
        if not dest.exists():
            broken.append(url)
        elif REPO.resolve() not in dest.parents and dest != REPO.resolve():
            broken.append(f"{url} (outside the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{url} (no heading #{anchor})")
    assert not broken, f"{doc.name}: broken links {broken}"


@cache
def _help(*args: str) -> str:
    r = subprocess.run([*labelqa_cmd(), *args, "--help"], capture_output=True, text=True, env=labelqa_env(),
                       timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _commands(help_text: str) -> set[str]:
    """Command names in a `--help` page (the rows of its Commands panel)."""
    panel = help_text.split("Commands", 1)[-1] if "Commands" in help_text else ""
    return set(re.findall(r"^\W*([a-z][a-z0-9-]*)\s{2,}\S", panel, re.M))


@pytest.mark.slow
def test_every_labelqa_command_in_the_readme_exists():
    text = README.read_text(encoding="utf-8")
    code = "\n".join(m.group(0) for m in _FENCE.finditer(text)) + "\n"
    code += "\n".join(_SPAN.findall(_FENCE.sub("", text)))
    named = re.findall(r"(?:^|[\s/`])labelqa ((?:[a-z][a-z0-9-]*)(?:\|[a-z][a-z0-9-]*)*)(?: ([a-z][a-z-]*))?", code,
                       re.M)
    assert named, "the README names no labelqa command"
    top = _commands(_help())
    assert {"serve", "demo", "train", "audit", "evaluate", "report"} <= top, top
    missing = []
    for subs, second in named:
        for sub in subs.split("|"):
            if sub not in top:
                missing.append(sub)
            elif second and _commands(_help(sub)):  # a command group: its subcommand must exist too
                if second not in _commands(_help(sub)):
                    missing.append(f"{sub} {second}")
    assert not missing, f"README names commands that `labelqa --help` does not list: {missing}"


def test_every_benchmark_script_has_a_row_in_the_benchmarks_readme():
    readme = (REPO / "benchmarks" / "README.md").read_text()
    scripts = sorted(p.name for p in (REPO / "benchmarks").iterdir() if p.suffix in (".py", ".sh"))
    missing = [s for s in scripts if f"[{s}]({s})" not in readme]
    assert not missing, f"benchmarks/README.md has no row for {missing}"
