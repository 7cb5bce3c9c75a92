"""Every citation of the project's documents resolves in ``docs/`` (issue 22, finding 7).

Comments cite the design, the contract and the kernel notes ("DESIGN.md invariant 7", "CONTRACT: never
grantable", 'KERNEL-NOTES "deadlock trap"'); a maintainer who clones the repository must find what they
cite. A citation is the document's name, then optionally (after a colon or not):
- ``invariant N`` (``invariants 2 and 7``): DESIGN.md has a heading ``### Invariant N:``;
- ``routing layer N``: DESIGN.md has a heading ``### Routing layer N:``;
- a phrase in double quotes or backticks (also after a comma: 'DESIGN.md, "Deny inside allow"'): the
  document holds it;
- plain words up to the next punctuation: the document holds the first three of them;
- nothing (``(CONTRACT)``): the document as a whole.
A bare ``invariant N`` anywhere names DESIGN.md's. The test names the docs give (``tests/test_x.py::name``)
exist, and every invariant's section names at least one. Pure text: runs in well under a second.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_NAMES = ("DESIGN", "CONTRACT", "KERNEL-NOTES")
INVARIANTS = range(1, 13)  # DESIGN.md's list; a new invariant extends it here and there

# Where citations live: the code, its data and goldens, the benchmarks, the tests, the README and the docs.
SOURCE_DIRS = ("supervisor", "nono_shell", "interpose", "bench", "tests", "scripts", "docs")
SOURCE_SUFFIXES = {".py", ".c", ".h", ".toml", ".sb", ".md", ""}

CITATION = re.compile(r"(?<![\w-])(?P<doc>DESIGN|CONTRACT|KERNEL-NOTES)(?:\.md)?(?![\w-])(?P<rest>.{0,160})")
NUMBERS = r"(?P<numbers>\d+(?:\s*(?:,|and|to|or)\s*\d+)*)"
INVARIANT = re.compile(r"\binvariants?\s+" + NUMBERS)
ROUTING = re.compile(r"^routing layers?\s+" + NUMBERS)
QUOTED = re.compile(r'^(?:"(?P<dq>[^"]+)"|`(?P<bq>[^`]+)`)')
WORDS = re.compile(r"^(?P<words>[\w'~/.-]+(?: [\w'~/.-]+){0,2})")
TEST_REF = re.compile(r"tests/(?P<file>test_\w+\.py)::(?P<name>\w+)")


def _sources() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "setup.py"]
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return [f for f in files if f.name != Path(__file__).name]


def _flat(text: str) -> str:
    """One line per file: comment markers at line starts dropped, so a citation broken across lines reads
    as one ("(invariant\\n * 1)" in C, "# DESIGN: two\\n# policies" in Python)."""
    return re.sub(r"\s*\n\s*(?:#+|\*+(?!/)|//|;+)?\s*", " ", text)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", "").replace("*", "")).lower()


def _doc(name: str) -> str:
    return (DOCS / f"{name}.md").read_text()


def _numbers(match: re.Match) -> set[int]:
    found = {int(n) for n in re.findall(r"\d+", match["numbers"])}
    if re.search(r"\bto\b", match["numbers"]):
        low, high = min(found), max(found)
        found |= set(range(low, high + 1))
    return found


def _headings(doc: str, kind: str) -> set[int]:
    return {int(n) for n in re.findall(rf"^### {kind} (\d+):", _doc(doc), re.M)}


def _citations() -> list[tuple[str, str, str]]:
    """(file, document, what it cites) for every citation; ``what`` is '' for the document as a whole."""
    found = []
    for path in _sources():
        try:
            text = _flat(path.read_text())
        except UnicodeDecodeError:
            continue
        where = str(path.relative_to(ROOT))
        for m in CITATION.finditer(text):
            found.append((where, m["doc"], m["rest"]))
    return found


def _problem(doc: str, rest: str) -> str | None:
    """Why this citation does not resolve, or None."""
    rest = rest.lstrip(" :")
    if re.match(r'^, *["`]', rest):
        rest = rest.lstrip(", ")
    invariant = INVARIANT.match(rest)
    if invariant:
        missing = _numbers(invariant) - _headings("DESIGN", "Invariant")
        return f"no invariant {sorted(missing)} in DESIGN.md" if doc != "DESIGN" or missing else None
    routing = ROUTING.match(rest)
    if routing:
        missing = _numbers(routing) - _headings("DESIGN", "Routing layer")
        return f"no routing layer {sorted(missing)} in DESIGN.md" if doc != "DESIGN" or missing else None
    quoted = QUOTED.match(rest)
    phrase = (quoted["dq"] or quoted["bq"]) if quoted else None
    if phrase is None:
        words = WORDS.match(rest)
        if words is None or words["words"].rstrip(".") in ("", "'s"):
            return None  # the document as a whole: "(CONTRACT)", "(DESIGN.md)."
        phrase = words["words"].rstrip(".")
    if _norm(phrase) not in _norm(_doc(doc)):
        return f"{doc}.md does not say {phrase!r}"
    return None


def test_the_cited_documents_live_in_docs():
    for name in DOC_NAMES:
        assert (DOCS / f"{name}.md").is_file(), f"docs/{name}.md is missing"
    assert _headings("DESIGN", "Invariant") == set(INVARIANTS)


def test_the_code_cites_the_documents():
    """The scan finds the citations the code is known to make (a broken scan would pass everything)."""
    cited = {(where, doc) for where, doc, _ in _citations()}
    assert ("supervisor/linux/notify.py", "DESIGN") in cited
    assert ("supervisor/linux/_spawn.c", "KERNEL-NOTES") in cited
    assert ("supervisor/policy/access.py", "CONTRACT") in cited
    assert len(cited) > 40


def test_every_citation_names_something_the_document_says():
    problems = [
        f"{where}: {doc}{rest[:60]!r}: {why}"
        for where, doc, rest in _citations()
        if (why := _problem(doc, rest))
    ]
    assert not problems, "\n".join(problems)


def test_every_bare_invariant_number_exists():
    problems = []
    for path in _sources():
        text = _flat(path.read_text(errors="replace"))
        for m in INVARIANT.finditer(text):
            if missing := _numbers(m) - set(INVARIANTS):
                problems.append(f"{path.relative_to(ROOT)}: invariant {sorted(missing)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "rest, why",
    [
        (" invariant 13", "no invariant [13]"),
        (' "no such section"', "does not say"),
        (": no such words here", "does not say"),
        (" routing layer 9", "no routing layer [9]"),
    ],
)
def test_a_citation_of_what_the_design_does_not_say_is_caught(rest, why):
    """The checker's bare twin: citations that resolve to nothing fail it."""
    assert why in (_problem("DESIGN", rest) or "")


def test_the_checker_accepts_the_forms_the_code_uses():
    assert _problem("DESIGN", " invariants 2 and 7).") is None
    assert _problem("DESIGN", " routing layer 4)") is None
    assert _problem("KERNEL-NOTES", ' "deadlock trap").') is None
    assert _problem("CONTRACT", ": never grantable).") is None
    assert _problem("CONTRACT", ")") is None


def test_the_tests_the_docs_name_exist():
    problems = []
    for doc in DOC_NAMES:
        for m in TEST_REF.finditer(_doc(doc)):
            test_file = ROOT / "tests" / m["file"]
            if not test_file.is_file() or not re.search(
                rf"^\s*(?:async )?def {m['name']}\(", test_file.read_text(), re.M
            ):
                problems.append(f"docs/{doc}.md names tests/{m['file']}::{m['name']}, which does not exist")
    assert not problems, "\n".join(problems)


def test_every_invariant_names_the_tests_that_prove_it():
    design = _doc("DESIGN")
    sections = re.split(r"^### Invariant (\d+):", design, flags=re.M)[1:]
    for number, body in zip(sections[0::2], sections[1::2], strict=True):
        body = re.split(r"^#{1,3} ", body, flags=re.M)[0]
        assert TEST_REF.search(body), f"invariant {number} names no test (tests/test_x.py::name)"


def test_every_readme_section_cited_exists():
    """The docs and comments also cite the README by section ('README, "Left to Landlock"')."""
    readme = _norm((ROOT / "README.md").read_text())
    problems = []
    for path in _sources():
        text = _flat(path.read_text(errors="replace"))
        for phrase in re.findall(r"\bREADME(?:'s|,)? \"([^\"]+)\"", text):
            if _norm(phrase) not in readme:
                problems.append(f"{path.relative_to(ROOT)}: README does not say {phrase!r}")
    assert not problems, "\n".join(problems)


def _ioctl(direction: int, number: int, size: int) -> int:
    """``_IOC`` of include/uapi/asm-generic/ioctl.h (x86-64 and arm64 alike); seccomp's type is ``!``."""
    return direction << 30 | size << 16 | ord("!") << 8 | number


def test_the_kernel_notes_ioctl_numbers_are_the_codes_and_the_struct_sizes():
    """KERNEL-NOTES' table, notify.py's and _notify.c's constants are one set of numbers, each the encoding
    of its struct's size as notify.py packs it (a wrong layout or a typo in either breaks this)."""
    noted = dict(
        re.findall(r"^\| `SECCOMP_IOCTL_NOTIF_(\w+)` \| `(0x[0-9a-f]+)`", _doc("KERNEL-NOTES"), re.M)
    )
    notify = (ROOT / "supervisor/linux/notify.py").read_text()
    in_python = dict(re.findall(r"^_IOCTL_(\w+) = (0x[0-9A-Fa-f]+)", notify, re.M))
    in_c = dict(
        re.findall(
            r"#define SECCOMP_IOCTL_NOTIF_(\w+) (0x[0-9a-fA-F]+)",
            (ROOT / "supervisor/linux/_notify.c").read_text(),
        )
    )
    noted = {name: int(value, 16) for name, value in noted.items()}
    assert set(noted) == {"RECV", "SEND", "ID_VALID", "ADDFD", "SET_FLAGS"}
    assert noted == {name: int(value, 16) for name, value in in_python.items()}
    assert {name: noted[name] for name in in_c} == {name: int(value, 16) for name, value in in_c.items()}
    size = {
        name: struct.calcsize(fmt)
        for name, fmt in re.findall(r'^_(\w+) = struct\.Struct\("([^"]+)"\)', notify, re.M)
    }
    read_write, write = 3, 1
    assert noted["RECV"] == _ioctl(read_write, 0, size["NOTIF"]) and size["NOTIF"] == 80
    assert noted["SEND"] == _ioctl(read_write, 1, size["RESP"]) and size["RESP"] == 24
    assert noted["ID_VALID"] == _ioctl(write, 2, size["ID"])
    assert noted["ADDFD"] == _ioctl(write, 3, size["ADDFD"]) and size["ADDFD"] == 24
    assert noted["SET_FLAGS"] == _ioctl(write, 4, 8)  # a u64 flag word, passed by value


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_docs_links_and_anchors_resolve():
    for doc in DOC_NAMES:
        for target, anchor in re.findall(r"\]\(([\w.-]*)(?:#([\w-]+))?\)", _doc(doc)):
            linked = DOCS / (target or f"{doc}.md")
            assert linked.is_file(), f"docs/{doc}.md links {target}, which does not exist"
            if anchor:
                slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), re.M)}
                assert anchor in slugs, f"docs/{doc}.md links {target}#{anchor}, which no heading makes"


def test_the_readme_links_to_the_docs():
    readme = (ROOT / "README.md").read_text()
    for name in DOC_NAMES:
        assert f"](docs/{name}.md)" in readme, f"README does not link docs/{name}.md"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), f"README links {link}, which does not exist"
