"""Canvas: signatures now; chain, group, chord, chunks, map and starmap come with the workflows work."""

from fastq.canvas.signatures import Signature, maybe_signature, signature

__all__ = ['Signature', 'maybe_signature', 'signature']
