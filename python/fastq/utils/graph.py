"""`DependencyGraph`: what `AsyncResult.graph` returns, with Celery's interface (`celery.utils.graph`).

A task that sends tasks has children, which may have their own; `result.graph` draws that tree once it is
done, and `graph.to_dot(fh)` writes it for Graphviz in Celery's DOT (the same node and edge lines and
colours, so scripts that post-process Celery's output keep working). The graph maps each node to the
nodes it points to (a task to the tasks it sent); `topsort()` orders them dependencies first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = ['CycleError', 'DependencyGraph', 'GraphFormatter']


class CycleError(Exception):
    """A cycle was detected in an acyclic graph."""


class GraphFormatter:
    """How `to_dot` draws: the DOT lines and their attributes (override `label` to name nodes your way)."""

    scheme: dict[str, Any] = {'shape': 'box', 'arrowhead': 'vee', 'style': 'filled', 'fontname': 'HelveticaNeue'}
    edge_scheme: dict[str, Any] = {'color': 'darkseagreen4', 'arrowcolor': 'black', 'arrowsize': 0.7}
    node_scheme: dict[str, Any] = {'fillcolor': 'palegreen3', 'color': 'palegreen4'}
    term_scheme: dict[str, Any] = {'fillcolor': 'palegreen1', 'color': 'palegreen2'}
    graph_scheme: dict[str, Any] = {'bgcolor': 'mintcream'}

    def __init__(
        self,
        root: Any = None,
        type: str | None = None,
        id: str | None = None,
        indent: int = 0,
        inw: str = ' ' * 4,
        **scheme: Any,
    ) -> None:
        self.id = id or 'dependencies'
        self.root = root
        self.type = type or 'digraph'
        self.direction = {'graph': '--', 'digraph': '->'}[self.type]
        self.IN = inw * (indent or 0)
        self.INp = self.IN + inw
        self.scheme = {**self.scheme, **scheme}
        self.graph_scheme = {**self.graph_scheme, 'root': self.label(self.root)}

    def label(self, obj: Any) -> Any:
        return obj

    def attrs(self, d: dict[str, Any] | None, scheme: dict[str, Any] | None = None) -> str:
        merged = {**self.scheme, **(scheme or {}), **(d or {})}
        return ', '.join(f'{name}="{value}"' for name, value in merged.items())

    def head(self, **attrs: Any) -> str:
        return f'{self.IN}{self.type} {self.id} {{\n{self.INp}graph [{self.attrs(attrs, self.graph_scheme)}]'

    def tail(self) -> str:
        return f'{self.IN}}}'

    def node(self, obj: Any, **attrs: Any) -> str:
        return self.draw_node(obj, self.node_scheme, attrs)

    def terminal_node(self, obj: Any, **attrs: Any) -> str:
        return self.draw_node(obj, self.term_scheme, attrs)

    def edge(self, a: Any, b: Any, **attrs: Any) -> str:
        return self.draw_edge(a, b, attrs=attrs)

    def draw_edge(self, a: Any, b: Any, scheme: dict[str, Any] | None = None, attrs: Any = None) -> str:
        drawn = self.attrs(attrs, {**self.edge_scheme, **(scheme or {})})
        return f'{self.INp}"{self.label(a)}" {self.direction} "{self.label(b)}" [{drawn}]'

    def draw_node(self, obj: Any, scheme: dict[str, Any] | None = None, attrs: Any = None) -> str:
        return f'{self.INp}"{self.label(obj)}" [{self.attrs(attrs, scheme)}]'


class DependencyGraph:
    """A directed acyclic graph of objects and what each depends on (built from `(obj, deps)` pairs)."""

    def __init__(self, it: Iterable[tuple[Any, Iterable[Any]]] | None = None, formatter: Any = None) -> None:
        self.formatter = formatter or GraphFormatter()
        self.adjacent: dict[Any, list[Any]] = {}
        if it is not None:
            self.update(it)

    def add_arc(self, obj: Any) -> None:
        """Add a node."""
        self.adjacent.setdefault(obj, [])

    def add_edge(self, a: Any, b: Any) -> None:
        """`a` depends on (points to) `b`."""
        self[a].append(b)

    def connect(self, graph: DependencyGraph) -> None:
        """Add the nodes of another graph."""
        self.adjacent.update(graph.adjacent)

    def update(self, it: Iterable[tuple[Any, Iterable[Any]]]) -> None:
        tups = list(it)
        for obj, _ in tups:
            self.add_arc(obj)
        for obj, deps in tups:
            for dep in deps:
                self.add_edge(obj, dep)

    def edges(self) -> Iterator[Any]:
        """The nodes that point to others."""
        return (obj for obj, adjacent in self.items() if adjacent)

    def valency_of(self, obj: Any) -> int:
        """The edges below `obj`: its own and, recursively, its dependencies' (0 for a leaf or a stranger),
        the number Celery's `DependencyGraph` prints after each node of `result.graph`."""
        try:
            deps = self[obj]
        except KeyError:
            return 0
        return len(deps) + sum(self.valency_of(dep) for dep in deps)

    def topsort(self) -> list[Any]:
        """The nodes, each after the ones it depends on (Kahn's algorithm); CycleError on a cycle."""
        indegree: Counter[Any] = Counter({obj: 0 for obj in self})
        for obj in self:
            for dep in self[obj]:
                indegree[dep] += 1
        ready = [obj for obj in self if indegree[obj] == 0]
        order = []
        while ready:
            obj = ready.pop()
            order.append(obj)
            for dep in self.adjacent.get(obj, ()):
                indegree[dep] -= 1
                if indegree[dep] == 0:
                    ready.append(dep)
        if len(order) < len(indegree):
            raise CycleError('the graph has a cycle')
        order.reverse()  # dependencies first
        return order

    def to_dot(self, fh: IO[str], formatter: Any = None) -> None:
        """Write the graph in Graphviz's DOT language to the text file `fh`."""
        draw = formatter or self.formatter
        seen: set[Any] = set()

        def once(fun: Any, obj: Any) -> None:
            if draw.label(obj) not in seen:
                print(fun(obj), file=fh)
                seen.add(draw.label(obj))

        print(draw.head(), file=fh)
        for obj, adjacent in self.items():
            if not adjacent:
                once(draw.terminal_node, obj)
            for dep in adjacent:
                once(draw.node, obj)
                print(draw.edge(obj, dep), file=fh)
        print(draw.tail(), file=fh)

    def format(self, obj: Any) -> Any:
        return self.formatter(obj) if callable(self.formatter) else obj

    def items(self) -> Iterable[tuple[Any, list[Any]]]:
        return self.adjacent.items()

    iteritems = items

    def __iter__(self) -> Iterator[Any]:
        return iter(self.adjacent)

    def __getitem__(self, node: Any) -> list[Any]:
        return self.adjacent[node]

    def __len__(self) -> int:
        return len(self.adjacent)

    def __contains__(self, obj: object) -> bool:
        return obj in self.adjacent

    def __repr__(self) -> str:
        return '\n'.join(self.repr_node(node) for node in self)

    def repr_node(self, obj: Any, level: int = 1, fmt: str = '{0}({1})') -> str:
        lines = [fmt.format(obj, self.valency_of(obj))]
        for other in self.adjacent.get(obj, ()):
            lines.append('     ' * level + fmt.format(other, self.valency_of(other)))
            lines.extend(self.repr_node(other, level + 1).split('\n')[1:])
        return '\n'.join(lines)
