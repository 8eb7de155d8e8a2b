"""The repository carries its own method document: code, configs, docs and tests cite
docs/method.md, never the developers' private note, and every section they cite exists."""
import re
import subprocess

import pytest

from tests.helpers import ROOT

METHOD_DOC = ROOT / "docs" / "method.md"
PRIVATE_NOTE = "METHOD" + ".md"  # spelled in two parts so this file does not cite it itself
#: reference outputs are written by runs and are not documentation; the script rewrites the rest
EXCLUDED_TOP = {"results", ".git"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg", ".ini", ".smk", ".json", ""}


def repo_text_files():
    """Tracked and untracked (not ignored) files outside results/, or a directory walk when the
    tree is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
        paths = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        skip = EXCLUDED_TOP | {".venv", "__pycache__", ".snakemake"}
        paths = [p for p in ROOT.rglob("*")
                 if not any(part in skip or part.startswith(".cache") for part in p.relative_to(ROOT).parts)]
    for p in paths:
        rel = p.relative_to(ROOT)
        if rel.parts[0] in EXCLUDED_TOP or not p.is_file() or p.suffix not in TEXT_SUFFIXES:
            continue
        try:
            yield rel, p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def method_sections() -> set[str]:
    """Section numbers of docs/method.md: '## 3. ...' gives '3', '### 3b. ...' gives '3b'."""
    return set(re.findall(r"^#{2,3} (\d+[a-z]?)\. ", METHOD_DOC.read_text(encoding="utf-8"), flags=re.M))


def test_method_doc_has_sections_1_to_7_with_their_subsections():
    secs = method_sections()
    assert {str(i) for i in range(1, 8)} <= secs
    assert {"1a", "1b", "3a", "3b"} <= secs
    # a subsection needs its section
    assert all(s.rstrip("abcdefghij") in secs for s in secs)


def test_nothing_outside_results_cites_the_private_note():
    offenders = [f"{rel}:{i}" for rel, text in repo_text_files()
                 for i, line in enumerate(text.splitlines(), 1) if PRIVATE_NOTE in line]
    assert not offenders, (f"{PRIVATE_NOTE} is not in the repository; cite docs/method.md instead "
                           f"(bash scripts/fix_method_citations.sh): {offenders}")


def test_every_cited_section_exists():
    secs = method_sections()
    cited = {}
    for rel, text in repo_text_files():
        for m in re.finditer(r"docs/method\.md\s+(?:§|section\s+)(\d+[a-z]?)", text):
            cited.setdefault(m.group(1), []).append(str(rel))
    assert cited, "no file cites a section of docs/method.md; the search pattern is broken"
    missing = {s: files for s, files in cited.items() if s not in secs}
    assert not missing, f"citations of sections that docs/method.md does not have: {missing}"


@pytest.mark.parametrize("text, expected", [
    ("see METHOD" + ".md section 3b.", "see docs/method.md §3b."),
    ("(METHOD" + ".md 2)", "(docs/method.md §2)"),
    ("METHOD" + ".md's closed form", "docs/method.md's closed form"),
    ("docs/method.md §3a", "docs/method.md §3a"),  # already rewritten: unchanged
])
def test_fix_script_rewrites_each_form_once(tmp_path, text, expected):
    """scripts/fix_method_citations.sh in a scratch repository: each citation form becomes a
    docs/method.md section reference, and a second run changes nothing."""
    import shutil

    if shutil.which("git") is None:
        pytest.skip("git is not installed")  # the script works on a git checkout only
    repo = tmp_path / "r"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "a.py").write_text(text + "\n")
    (repo / "results").mkdir()
    (repo / "results" / "out.md").write_text(text + "\n")
    script = ROOT / "scripts" / "fix_method_citations.sh"
    for _ in range(2):
        subprocess.run(["bash", str(script)], cwd=repo, check=True, capture_output=True, timeout=60)
        assert (repo / "a.py").read_text() == expected + "\n"
    assert (repo / "results" / "out.md").read_text() == text + "\n"  # reference outputs untouched
