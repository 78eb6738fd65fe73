"""The tool registry: ``@tool`` turns a function into a :class:`Tool` the model may call.

A tool's name, description and JSON Schema parameters come from the function: its name,
its docstring and its signature's type hints (a pydantic model built from them, which
also validates the model's arguments). A parameter annotated :class:`ToolContext` is not
shown to the model: the executor passes the caller there.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import pydantic
from asgiref.sync import iscoroutinefunction
from django.utils.module_loading import import_string

#: A permission: ``"app_label.codename"`` (``user.has_perm``), or a callable taking the user.
Permission = str | Callable[[Any], bool] | Callable[[Any], Awaitable[bool]]

#: Seconds a tool may run when it names no ``timeout``.
DEFAULT_TIMEOUT = 30.0

_registry: dict[str, Tool] = {}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who a tool runs for: pass it by annotating a parameter with this class."""

    user: Any
    #: The :class:`~copilotedge.auth.Principal` of the turn (its user, API key and address).
    principal: Any
    tool_call_id: str
    conversation_id: Any = None


@dataclass(frozen=True, slots=True)
class Tool:
    """One server-side tool and how it may be run."""

    name: str
    description: str
    function: Callable[..., Any]
    #: Validates the model's arguments; its JSON Schema is what the model is shown.
    arguments: type[pydantic.BaseModel]
    #: The parameter that receives the :class:`ToolContext`, if any.
    context_parameter: str | None = None
    permission: Permission | None = None
    confirm: bool = False
    timeout: float = DEFAULT_TIMEOUT
    is_async: bool = False

    def definition(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry that offers this tool to the model."""
        parameters = _parameters_schema(self.arguments)
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters,
            },
        }


@functools.cache
def _parameters_schema(arguments: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The JSON Schema of a tool's arguments, made once (pydantic takes a while to make it);
    every turn that offers the tool sends it upstream unchanged."""
    parameters = arguments.model_json_schema()
    parameters.pop("title", None)
    return parameters


def _arguments_model(
    name: str, function: Callable[..., Any]
) -> tuple[type[pydantic.BaseModel], str | None]:
    hints = typing.get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {}
    context_parameter = None
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"Tool {name!r}: *args and **kwargs cannot be described to a model.")
        annotation = hints.get(parameter.name, Any)
        if annotation is ToolContext:
            context_parameter = parameter.name
            continue
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    model = pydantic.create_model(
        f"{name}_arguments", __config__=pydantic.ConfigDict(extra="forbid"), **fields
    )
    return model, context_parameter


def make_tool(
    function: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    permission: Permission | None = None,
    confirm: bool = False,
    timeout: float | None = None,
) -> Tool:
    """A :class:`Tool` for ``function`` (not registered; :func:`tool` registers)."""
    tool_name = name or function.__name__
    arguments, context_parameter = _arguments_model(tool_name, function)
    return Tool(
        name=tool_name,
        description=description or inspect.cleandoc(function.__doc__ or ""),
        function=function,
        arguments=arguments,
        context_parameter=context_parameter,
        permission=permission,
        confirm=confirm,
        timeout=DEFAULT_TIMEOUT if timeout is None else float(timeout),
        is_async=iscoroutinefunction(function),
    )


@overload
def tool(function: F, /) -> F: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    permission: Permission | None = None,
    confirm: bool = False,
    timeout: float | None = None,
) -> Callable[[F], F]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    permission: Permission | None = None,
    confirm: bool = False,
    timeout: float | None = None,
) -> Any:
    """Register a sync or async function as a server-side tool; the function is unchanged.

    ``permission``: ``"app_label.codename"`` or a callable taking the user (sync or async);
    a caller without it gets a refusal as the tool's result. ``confirm=True``: a person
    approves each call first. ``timeout``: seconds (default 30). ``name`` and
    ``description`` replace the function's name and docstring.
    """

    def register(function: F) -> F:
        made = make_tool(
            function,
            name=name,
            description=description,
            permission=permission,
            confirm=confirm,
            timeout=timeout,
        )
        _registry[made.name] = made
        function.copilotedge_tool = made  # type: ignore[attr-defined]
        return function

    if function is not None:
        return register(function)
    return register


class UnknownTool(LookupError):
    """No tool is registered under that name, and it is no importable tool either."""


def get_tool(reference: str) -> Tool:
    """The tool registered as ``reference``, or found at that dotted path (imported)."""
    found = _registry.get(reference)
    if found is not None:
        return found
    if "." in reference:
        try:
            target = import_string(reference)
        except ImportError as error:
            raise UnknownTool(reference) from error
        if isinstance(target, Tool):
            return target
        made = getattr(target, "copilotedge_tool", None)
        if isinstance(made, Tool):
            return made
    raise UnknownTool(reference)


def registered_tools() -> dict[str, Tool]:
    """Every tool registered so far, by name."""
    return dict(_registry)


def unregister(name: str) -> None:
    """Forget a registered tool (for tests that register their own)."""
    _registry.pop(name, None)
