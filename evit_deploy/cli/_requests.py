"""A command's options, made from its request's fields (``evit_deploy.requests``).

``@takes(VerifyRequest)`` replaces the command's ``request`` parameter by one Typer option
per request field (nested models such as the tolerances give one flag per field), then
builds the request from what the user typed. Types, defaults, help and flag names all come
from the request, so the CLI, the API and the device worker cannot drift apart.
"""
from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from evit_deploy.cli._errors import handle_errors
from evit_deploy.requests import Request

F = TypeVar("F", bound=Callable[..., Any])
_METAVARS: dict[Any, str] = {int: "INT", float: "NUMBER", Path: "PATH", str: "TEXT"}
_NESTED = "__"  # parameter name of a nested field: tolerances__max_rel


def _cli_spec(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return dict(extra.get("cli") or {})


def _plain(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); ``Annotated[X, ...]`` -> X."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner, _ = _plain(args[0]) if len(args) == 1 else (annotation, False)
        return inner, True
    return annotation, False


def _option(name: str, field: FieldInfo) -> inspect.Parameter | None:
    spec = _cli_spec(field)
    if spec.get("hidden"):
        return None
    kind, optional = _plain(field.annotation)
    kind = spec.get("as_type") or kind
    if kind is list:  # a repeatable option (--point A --point B): the texts reach the request as a list
        info = typer.Option(*(spec.get("flags") or ["--" + name.replace("_", "-")]), help=field.description or "",
                            metavar=spec.get("metavar") or "TEXT", show_default=False)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[list[str] | None, info])
    if kind not in _METAVARS and kind is not bool:
        raise TypeError(f"request field {name!r} has no command-line form ({kind!r}); give it cli(as_type=...)")
    # Values reach the request as typed text, so its checks (and messages) are the API's too.
    cli_type = bool if kind is bool else str
    # a required option is left to the request to ask for, in the API's words ("eval needs --data")
    default = None if field.default_factory is not None or field.is_required() else field.default
    help_text = field.description or ""
    if spec.get("argument"):
        info: Any = typer.Argument(help=help_text, metavar=spec.get("metavar") or name.upper(), show_default=False)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[cli_type, info])
    flags = list(spec.get("flags") or [])
    if not flags:
        flag = "--" + name.split(_NESTED)[-1].replace("_", "-")
        flags = [f"{flag}/--no-{flag[2:]}" if kind is bool and default is True else flag]
    metavar = None if kind is bool else spec.get("metavar") or _METAVARS[kind]
    info = typer.Option(*flags, help=help_text, metavar=metavar, show_default=default is not None)
    default = default if kind is bool or default is None else str(default)
    annotation = (cli_type | None) if optional or default is None else cli_type
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, info])


def _parameters(model: type[BaseModel], prefix: str = "") -> Iterator[inspect.Parameter]:
    for name, field in model.model_fields.items():
        kind, _ = _plain(field.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and not _cli_spec(field).get("hidden"):
            yield from _parameters(kind, prefix=f"{name}{_NESTED}")
            continue
        param = _option(prefix + name, field)
        if param is not None:
            yield param


def _fields(values: dict[str, Any]) -> dict[str, Any]:
    """Flat CLI values -> request fields (``tolerances__atol`` -> ``{"tolerances": {"atol": ...}}``)."""
    fields: dict[str, Any] = {}
    for key, value in values.items():
        if _NESTED in key:
            outer, inner = key.split(_NESTED, 1)
            if value is not None:
                fields.setdefault(outer, {})[inner] = value
        else:
            fields[key] = value
    return fields


def takes(request_cls: type[Request], **fixed: Callable[[dict[str, Any]], Any]) -> Callable[[F], F]:
    """Give the command one option per field of ``request_cls`` and hand it the built request.

    ``fixed`` fills fields the CLI does not take as flags, from the command's other
    parameters (e.g. export's target options from the extra arguments).
    """

    def wrap(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()
               if p.name != "request"]
        generated = list(_parameters(request_cls))
        names = {p.name for p in generated}

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            values = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            with handle_errors():
                fields = _fields(values)
                fields.update({name: make(kwargs) for name, make in fixed.items()})
                request = request_cls.parse(**fields)
            return func(request=request, **kwargs)

        command.__signature__ = signature.replace(parameters=[*generated, *own])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in [*generated, *own]}
        return command  # type: ignore[return-value]

    return wrap
