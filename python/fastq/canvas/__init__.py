"""Canvas: signatures and the workflows built from them, with Celery's names, semantics and wire format.

`signature`/`Signature` (one task call), `chain` (one after another), `group` (in parallel), `chord` (a group,
then a task with all its results), `chunks`, `xmap` and `xstarmap` (one task over many arguments), and
`StampingVisitor` for `.stamp()`.
"""

from fastq.canvas.chain import chain
from fastq.canvas.chord import chord
from fastq.canvas.chunks import chunks, xmap, xstarmap
from fastq.canvas.group import group
from fastq.canvas.signatures import Signature, maybe_signature, signature, subtask
from fastq.canvas.stamping import StampingVisitor

__all__ = [
    'Signature',
    'StampingVisitor',
    'chain',
    'chord',
    'chunks',
    'group',
    'maybe_signature',
    'signature',
    'subtask',
    'xmap',
    'xstarmap',
]
