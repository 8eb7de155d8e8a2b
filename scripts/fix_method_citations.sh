#!/usr/bin/env bash
# Point every citation of the developers' private math note (METHOD followed by ".md", which users
# never see) at the repository's own docs/method.md, whose sections keep the note's numbering.
#
#   "<note> section 3b"  -> "docs/method.md §3b"
#   "<note> 3a"          -> "docs/method.md §3a"
#   "<note>'s ..."       -> "docs/method.md's ..."
#   any other mention    -> "docs/method.md"
#
# Idempotent: the replacement text no longer matches, so a second run changes nothing.  It edits
# tracked and untracked (not ignored) files, never results/ (reference outputs) or docs/method.md.
# Run from anywhere inside the repository; afterwards tests/unit/test_docs_citations.py must pass.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

pat='METHOD\.md'
mapfile -t files < <(git grep -lI --untracked -e "$pat" -- . ':!results' ':!docs/method.md' ':!scripts/fix_method_citations.sh' || true)
if [ "${#files[@]}" -eq 0 ]; then
    echo "fix_method_citations: no citation of the private note left"
    exit 0
fi
for f in "${files[@]}"; do
    sed -i -E \
        -e "s#(/work/shared/|shared/)?${pat} section ([0-9][a-z]?)#docs/method.md §\\2#g" \
        -e "s#(/work/shared/|shared/)?${pat} ([0-9][a-z]?)\\b#docs/method.md §\\2#g" \
        -e "s#(/work/shared/|shared/)?${pat}#docs/method.md#g" \
        "$f"
    echo "fix_method_citations: rewrote $f"
done
left=$(git grep -lI --untracked -e "$pat" -- . ':!results' ':!docs/method.md' ':!scripts/fix_method_citations.sh' || true)
if [ -n "$left" ]; then
    echo "fix_method_citations: still cited in: $left" >&2
    exit 1
fi
