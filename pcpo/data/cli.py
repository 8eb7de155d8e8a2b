"""``pcpo data fetch|list``: obtain the data and weights an experiment needs, verified (README "Data and weights")."""
from __future__ import annotations

import sys


def _common(p) -> None:
    p.add_argument("--root", help="data root (default $PCPO_DATA or data/)")
    p.add_argument("--catalogue", help="catalogue file (default $PCPO_DATA_CATALOGUE or pcpo/data/sources.yaml)")


def _needs(args, cat):
    from pcpo.data import DataError, needs_for_file

    needs = needs_for_file(args.for_config, cat, args.root)
    if needs.unresolved:
        raise DataError(f"{args.for_config} needs {len(needs.unresolved)} thing(s) no catalogue entry provides: "
                        f"{'; '.join(needs.unresolved)} (add entries to the catalogue or point the config at "
                        f"local copies)")
    return needs


def _fetch(args) -> int:
    from pcpo.data import DataError, data_root, fetch_entry, get_entry, load_catalogue

    cat = load_catalogue(args.catalogue)
    names = list(args.names)
    if args.for_config:
        needs = _needs(args, cat)
        role_names = needs.roles[args.role] if args.role else needs.names
        names += [n for n in role_names if n not in names]
    elif args.role:
        raise DataError("--role needs --for CONFIG")
    if not names:
        raise DataError("name what to fetch (`pcpo data fetch NAME`, or `--for CONFIG`); `pcpo data list` shows the names")
    entries = [get_entry(cat, n) for n in names]
    if args.dry_run:
        for e in entries:
            print(e.name)
        return 0
    root = data_root(args.root)
    for e in entries:
        st = fetch_entry(e, cat, root, progress=not args.no_progress, force=args.force, workers=args.workers)
        where = st.get("prepared", st)["path"]
        print(f"{e.name}\tverified\t{st['sha256'][:16]}\t{where}")
    return 0


def _list(args) -> int:
    from pcpo.data import data_root, load_catalogue, status

    cat = load_catalogue(args.catalogue)
    names = sorted(cat)
    if args.for_config:
        names = _needs(args, cat).names
    root = data_root(args.root)
    rows = [(n, cat[n].kind, status(cat[n], root, full=args.verify), cat[n].source_label()) for n in names]
    w = max([len(r[0]) for r in rows] + [4])
    for name, kind, st, src in rows:
        gated = "  (gated)" if cat[name].gated else ""
        print(f"{name:<{w}}  {kind:<14} {st:<8} {src}{gated}")
    bad = [r for r in rows if r[2] == "CORRUPT"]
    if bad:
        print(f"pcpo data list: {len(bad)} entries failed verification: {', '.join(r[0] for r in bad)}; "
              f"fetch them again with --force", file=sys.stderr)
        return 2
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="fetch and check datasets and weights (pcpo/data/sources.yaml)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download, verify (and prepare) catalogue entries")
    f.add_argument("names", nargs="*", metavar="NAME")
    f.add_argument("--for", dest="for_config", metavar="CONFIG", help="everything this experiment file needs")
    f.add_argument("--role", choices=["train", "sample", "evaluate"], help="with --for: only what these jobs need")
    f.add_argument("--dry-run", action="store_true", help="print the names that would be fetched")
    f.add_argument("--force", action="store_true", help="fetch again even when present")
    f.add_argument("--workers", type=int, default=None, help="image preparation threads")
    f.add_argument("--no-progress", action="store_true")
    _common(f)
    f.set_defaults(func=_fetch)
    li = dsub.add_parser("list", help="what the catalogue knows and what is present")
    li.add_argument("--for", dest="for_config", metavar="CONFIG", help="only what this experiment file needs")
    li.add_argument("--verify", action="store_true", help="re-hash what is present")
    _common(li)
    li.set_defaults(func=_list)
