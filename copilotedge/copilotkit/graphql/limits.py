"""What a GraphQL operation may cost before it runs: its size, fields, aliases and turns.

Its ``variables`` are bounded too (:data:`MAX_VARIABLE_VALUES`), since graphql-core
coerces them on the event loop when the operation runs.

A query is parsed with graphql-core's own bounds (source length, lexical tokens), then
its fields and aliases are counted with fragment spreads expanded (memoised per fragment,
so a fragment "bomb" is counted, not walked), and only then validated, which is
quadratic in the fields that share a response name. A document may hold one
``generateCopilotResponse``: one request is one turn, as on every other face.
:func:`aparse_operation` does all of it off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
    validate,
)

from copilotedge.conf import settings
from copilotedge.copilotkit.graphql.schema import get_schema

TURN_FIELD = "generateCopilotResponse"
#: JSON values (objects, arrays, scalars) ``variables`` may hold: graphql-core coerces
#: them on the event loop, some microseconds each. CopilotKit's largest (``COPILOTEDGE_
#: MAX_MESSAGES`` messages with their actions and context) holds a few thousand.
MAX_VARIABLE_VALUES = 10_000


@dataclass(frozen=True)
class Operation:
    """A parsed and validated request: the document, the operation to run, its variables."""

    document: DocumentNode
    name: str | None
    variables: dict[str, Any] | None


class _Counter:
    """Fields and aliases of a selection set, fragment spreads expanded."""

    def __init__(self, document: DocumentNode) -> None:
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.memo: dict[str, tuple[int, int]] = {}
        self.visiting: set[str] = set()

    def fragment(self, name: str) -> tuple[int, int]:
        if name in self.memo:
            return self.memo[name]
        definition = self.fragments.get(name)
        if definition is None or name in self.visiting:
            return 0, 0  # unknown or cyclic: validation reports it
        self.visiting.add(name)
        counted = self.memo[name] = self.selections(definition.selection_set)
        self.visiting.discard(name)
        return counted

    def selections(self, selection_set: SelectionSetNode | None) -> tuple[int, int]:
        fields = aliases = 0
        # An explicit stack: nesting depth is bounded by the token limit, not the C stack.
        stack = [selection_set]
        while stack:
            current = stack.pop()
            if current is None:
                continue
            for selection in current.selections:
                if isinstance(selection, FieldNode):
                    fields += 1
                    aliases += selection.alias is not None
                    stack.append(selection.selection_set)
                elif isinstance(selection, InlineFragmentNode):
                    stack.append(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    more_fields, more_aliases = self.fragment(selection.name.value)
                    fields += more_fields
                    aliases += more_aliases
        return fields, aliases


def _turn_fields(document: DocumentNode) -> int:
    count = 0
    stack: list[SelectionSetNode | None] = [
        d.selection_set
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode | FragmentDefinitionNode)
    ]
    while stack:
        current = stack.pop()
        if current is None:
            continue
        for selection in current.selections:
            if isinstance(selection, FieldNode):
                count += selection.name.value == TURN_FIELD
                stack.append(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                stack.append(selection.selection_set)
    return count


def count_values(value: Any, limit: int) -> int:
    """JSON values in ``value``, counting stopped once past ``limit``."""
    count, stack = 0, [value]
    while stack and count <= limit:
        current = stack.pop()
        count += 1
        if isinstance(current, dict):
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return count


def check_costs(document: DocumentNode) -> None:
    """Raise a ``GraphQLError`` if an operation has too many fields or aliases, or turns."""
    if _turn_fields(document) > 1:
        raise GraphQLError(f"A request may ask for {TURN_FIELD} once.")
    counter = _Counter(document)
    max_fields, max_aliases = settings.GRAPHQL_MAX_FIELDS, settings.GRAPHQL_MAX_ALIASES
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        fields, aliases = counter.selections(definition.selection_set)
        if fields > max_fields:
            raise GraphQLError(f"An operation may select at most {max_fields} fields.")
        if aliases > max_aliases:
            raise GraphQLError(f"An operation may use at most {max_aliases} aliases.")


def parse_operation(body: dict[str, Any]) -> Operation:
    """The body's operation, parsed, bounded and validated, or a ``GraphQLError``."""
    query, name, variables = body.get("query"), body.get("operationName"), body.get("variables")
    if not isinstance(query, str):
        raise GraphQLError("'query' must be a string.")
    if name is not None and not isinstance(name, str):
        raise GraphQLError("'operationName' must be a string.")
    if variables is not None and not isinstance(variables, dict):
        raise GraphQLError("'variables' must be an object.")
    if variables is not None and count_values(variables, MAX_VARIABLE_VALUES) > (
        MAX_VARIABLE_VALUES
    ):
        raise GraphQLError(f"'variables' may hold at most {MAX_VARIABLE_VALUES} JSON values.")
    max_length = settings.GRAPHQL_MAX_QUERY_LENGTH
    if len(query) > max_length:
        raise GraphQLError(f"'query' may be at most {max_length} characters long.")
    document = parse(query, max_tokens=settings.GRAPHQL_MAX_TOKENS)
    check_costs(document)
    errors = validate(get_schema(), document)
    if errors:
        raise errors[0]
    return Operation(document, name, variables)


#: :func:`parse_operation` in a worker thread, so a large query never holds the event loop.
aparse_operation = sync_to_async(parse_operation, thread_sensitive=False)
