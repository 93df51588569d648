"""Stamping (Celery 5.3's canvas API): labels put on every task of a workflow before it is sent.

`sig.stamp(visitor=None, append_stamps=False, **headers)` adds `headers` to the signature's options and
names them in `stamped_headers`; a group, chain or chord passes them on to every task in it (and their
callbacks and errbacks), and a `StampingVisitor` decides per node what to add. The stamps travel in the
task message (`stamped_headers` and `stamps` headers), read in the worker as `self.request.stamps`, are
stored with extended results, and `app.control.revoke_by_stamped_headers` revokes by them.

The merge rules are Celery's, including their quirks (checked against Celery in tests): a stamp already
there is kept over a new one of the same name unless `append_stamps`, which gathers both into a list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastq.canvas.signatures import Signature

__all__ = ['StampingVisitor', 'merge_stamps', 'stamp_headers']


class StampingVisitor:
    """Decides the stamps of each node of a workflow; override `on_signature` (required) and the others
    for the primitives you want to stamp differently. Each returns the stamps to add (a dict)."""

    def on_group_start(self, group: Any, **headers: Any) -> dict[str, Any]:
        return {}

    def on_group_end(self, group: Any, **headers: Any) -> None:
        pass

    def on_chain_start(self, chain: Any, **headers: Any) -> dict[str, Any]:
        return {}

    def on_chain_end(self, chain: Any, **headers: Any) -> None:
        pass

    def on_signature(self, sig: Any, **headers: Any) -> dict[str, Any]:
        raise NotImplementedError('a StampingVisitor must define on_signature')

    def on_chord_header_start(self, sig: Any, **header: Any) -> dict[str, Any]:
        from fastq.canvas.group import group

        if not isinstance(sig.tasks, group):
            sig.tasks = group(sig.tasks, app=sig._app)
        return self.on_group_start(sig.tasks, **header)

    def on_chord_header_end(self, sig: Any, **header: Any) -> None:
        self.on_group_end(sig.tasks, **header)

    def on_chord_body(self, sig: Any, **header: Any) -> dict[str, Any]:
        return {}

    def on_callback(self, callback: Any, **header: Any) -> dict[str, Any]:
        return {}

    def on_errback(self, errback: Any, **header: Any) -> dict[str, Any]:
        return {}


def merge_stamps(into: dict[str, Any], other: dict[str, Any] | None, aggregate: bool = True) -> None:
    """Merge `other` into `into` (in place), as Celery's stamping does: dicts recursively; two lists are
    joined; another duplicate keeps `into`'s value, or with `aggregate` becomes a list of both."""
    if not other:
        return
    for key, value in list(into.items()):
        if key not in other:
            continue
        theirs = other[key]
        if isinstance(value, dict):
            merge_stamps(value, theirs, aggregate)
            continue
        if isinstance(value, int | float | str) and aggregate:
            into[key] = [value]
        if isinstance(theirs, list) and isinstance(into[key], list):
            into[key].extend(theirs)
        elif aggregate:
            into[key] = [] if into[key] is None else list(into[key])
            into[key].append(theirs)
    for key, value in other.items():
        into.setdefault(key, value)


def stamp_headers(
    sig: Signature[Any],
    visitor_headers: dict[str, Any] | None = None,
    append_stamps: bool = False,
    self_headers: bool = True,
    **headers: Any,
) -> dict[str, Any]:
    """The stamps for `sig`: `headers`, then the visitor's, then (with `self_headers`) the ones `sig` has."""
    headers = dict(headers)
    headers.setdefault('stamped_headers', list(headers))
    if visitor_headers is not None:
        visitor_headers = dict(visitor_headers)
        visitor_headers.setdefault('stamped_headers', list(visitor_headers))
        merge_stamps(headers, visitor_headers, aggregate=append_stamps)
        headers['stamped_headers'] = _unique(headers['stamped_headers'])
    if self_headers:
        names = _unique([*headers.get('stamped_headers', []), *sig.options.get('stamped_headers', [])])
        headers['stamped_headers'] = names
        own = {k: v for k, v in sig.options.items() if k in names}
        merge_stamps(headers, own, aggregate=append_stamps)
        headers['stamped_headers'] = _unique(headers['stamped_headers'])
    return headers


def _unique(names: list[str]) -> list[str]:
    """Names once each, in first-seen order (Celery's order is a set's, so not defined)."""
    return list(dict.fromkeys(names))


def stamp_links(sig: Signature[Any], visitor: Any, append_stamps: bool = False, **headers: Any) -> None:
    """Stamp `sig`'s callbacks (`visitor.on_callback`) and errbacks (`on_errback`) with `headers`; the
    stamps `sig` itself has are not copied onto them."""
    import copy

    from fastq.canvas.signatures import maybe_signature
    from fastq.utils.functional import as_list

    for option, hook in (('link', 'on_callback'), ('link_error', 'on_errback')):
        current = copy.deepcopy(headers)
        for raw in as_list(sig.options.get(option)) or []:
            link = maybe_signature(raw, app=sig._app)
            if link is None:
                continue
            visitor_headers = getattr(visitor, hook)(link, **current) or {} if visitor is not None else None
            current = stamp_headers(link, visitor_headers, append_stamps, self_headers=False, **current)
            link.stamp(visitor, append_stamps, **current)
