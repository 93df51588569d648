"""`fastq upgrade settings FILE`: rename Celery's old setting names in a configuration file (Celery's command).

A Celery 3 configuration (`CELERY_ALWAYS_EAGER = True`, `BROKER_URL = ...`) is read by fastq as it is, but the
new lowercase names (`task_always_eager`) are what Celery's and fastq's documentation use; this rewrites the
file once (keeping a `.orig` copy). With `--django` (or `--compat`) the new names are written upper-case with
the `CELERY_` prefix, as a Django settings module read with `namespace='CELERY'` needs them.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError

if TYPE_CHECKING:
    from fastq.app import Fastq


def register(commands: Any) -> None:
    p = commands.add_parser('upgrade', help='perform upgrade between versions', description=__doc__.split('\n\n')[0])
    what = p.add_subparsers(dest='what', metavar='WHAT')
    s = what.add_parser('settings', help='migrate settings from Celery 3.x to the new names')
    s.add_argument('filename')
    s.add_argument('--django', action='store_true', help='upgrade a Django project (CELERY_ names)')
    s.add_argument('--compat', action='store_true', help='keep names usable with a namespace (CELERY_ names)')
    s.add_argument('--no-backup', action='store_true', help='do not back the file up first')
    p.set_defaults(handler=run, needs_app=False)


def renames() -> dict[str, str]:
    """Old name -> new name, for every old name Celery documents (and the new names written upper-case)."""
    from fastq.config import OLD_NAMES, SETTINGS

    brokers = {name.upper(): name for name in SETTINGS if name.startswith('broker_')}  # (Celery 3's BROKER_*)
    return {**brokers, **OLD_NAMES}


def _namespaced(name: str, namespace: str = 'CELERY') -> str:
    key = name.upper()
    return key if key.startswith(namespace) else f'{namespace}_{key}'


def upgrade_line(line: str, table: dict[str, str], namespaced: bool) -> tuple[bool, str]:
    """The line with the first old name in it renamed (longest names first: BROKER_TRANSPORT_OPTIONS before
    BROKER_TRANSPORT); whether it changed."""
    for old in sorted(table, key=len, reverse=True):
        new = _namespaced(table[old]) if namespaced else table[old]
        if old == new:
            continue
        changed = re.sub(rf'\b{re.escape(old)}\b', new, line)  # (whole names only: not inside another)
        if changed != line and 'CELERY_CELERY' not in changed:
            return True, changed
    return False, line


def run(app: Fastq | None, args: argparse.Namespace) -> int:
    if args.what != 'settings':
        raise CommandError('Usage: fastq upgrade settings FILENAME [--django] [--compat] [--no-backup]')
    try:
        with open(args.filename, encoding='utf-8') as f:
            lines = f.readlines()
    except OSError as exc:
        raise CommandError(f'Cannot read {args.filename}: {exc.strerror}') from None
    print(f'processing {args.filename}...', file=sys.stderr)
    table = renames()
    upgraded = [upgrade_line(line, table, args.django or args.compat) for line in lines]
    if not any(changed for changed, _ in upgraded):
        print('Does not seem to require any changes :-)')
        return 0
    if not args.no_backup:
        backup = f'{args.filename}.orig'
        print(f'writing backup to {backup}...', file=sys.stderr)
        shutil.copyfile(args.filename, backup)
    with open(args.filename, 'w', encoding='utf-8') as f:
        f.writelines(line for _, line in upgraded)
    print('Changes to your setting have been made!')
    return 0
