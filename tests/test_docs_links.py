"""The README is a short front door whose links, set-up commands and configuration table stay true."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings
from tests.support import ROOT

README = ROOT / "README.md"
DOCUMENTS = [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220

_FENCED = re.compile(r"^```.*?^```", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.M)


def _prose(text: str) -> str:
    """Markdown without code, where a link-like text is not a link."""
    return _INLINE_CODE.sub("", _FENCED.sub("", text))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens."""
    headings = _HEADING.findall(_FENCED.sub("", path.read_text()))
    return {re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-") for heading in headings}


def _relative_links(path: Path) -> list[str]:
    return [target for target in _LINK.findall(_prose(path.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def _fenced_shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)


def _configuration_table_variables() -> list[str]:
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, re.M)


def test_documents_to_check_exist() -> None:
    assert all(path.is_file() for path in DOCUMENTS)
    assert len(DOCUMENTS) > 3, "docs/ holds the topics the README links to"


def test_every_relative_link_resolves_to_a_file_and_heading() -> None:
    broken = []
    for document in DOCUMENTS:
        for target in _relative_links(document):
            file_part, _, anchor = target.partition("#")
            linked = (document.parent / file_part).resolve() if file_part else document
            if not linked.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_links_every_topic_in_docs() -> None:
    linked = {target.partition("#")[0] for target in _relative_links(README)}
    topics = {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")}
    assert topics <= linked, f"not linked from the README: {sorted(topics - linked)}"


def test_readme_is_a_short_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README has {len(lines)} lines; move topics to docs/"


def test_readme_opens_with_the_two_set_up_commands_run_then_test() -> None:
    text = README.read_text()
    first_section = text.split("\n## ", 2)[1]
    assert first_section.startswith("Set up\n"), "the set-up commands come before any other section"
    run, test = (block.strip() for block in _fenced_shell_blocks(first_section)[:2])
    assert "\n" not in run and "\n" not in test, "each set-up command is one line"
    assert run.endswith("/python -m service") and "pytest" not in run
    assert test.endswith("/python -m pytest")
    after_run = first_section.split(run, 1)[1].split(test, 1)[0]
    assert "curl localhost:8000/health" in after_run and "http://localhost:8000/docs" in after_run


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    _, test = (block.strip() for block in _fenced_shell_blocks(README.read_text())[:2])
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_configuration_table_lists_every_setting() -> None:
    listed = set(_configuration_table_variables())
    assert set(Settings.__struct_encode_fields__) <= listed
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in listed


def test_env_example_names_every_variable_in_the_configuration_table() -> None:
    named = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    missing = [name for name in _configuration_table_variables() if name not in named]
    assert not missing, f".env.example lacks {missing}"
