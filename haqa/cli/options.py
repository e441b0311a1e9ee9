"""Command-line options generated from a pydantic model's fields, so a new field needs no CLI code.

``model_options(FinetuneConfig)`` gives a command one ``--field-name`` option per field, with the
help taken from the field's description, its allowed values or range and its default. The command
receives what the user typed as one ``flags`` dict (``None`` for a flag not given), which is the
last layer of ``haqa.config.build``: TOML file, then environment, then flags. Values are checked
by the model, not by click, so a bad flag is the same one-line error as a bad TOML value.

Typer reads a command's parameters from its signature; the decorator hands it a signature built
from the model (``__signature__``), in the place of the command's ``flags`` parameter.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.markup import escape

R = TypeVar("R")

#: Field types taken as typed (besides bool switches, ``Literal`` choices and comma lists).
_SCALARS = (int, float, str)


def option_name(field: str) -> str:
    """The flag a field gets: ``learning_rate`` -> ``--learning-rate``."""
    return "--" + field.replace("_", "-")


def model_options(
    model: type[BaseModel],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    param: str = "flags",
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorate a Typer command (below ``@app.command``) whose ``param`` parameter takes the
    flags dict: one option per field of ``model`` is offered in its place, in field order.

    ``aliases`` adds spellings to a field's flag (``{"learning_rate": ("--lr",)}``). A bool field
    is a ``--x/--no-x`` switch, a ``list``/``tuple`` of strings a comma list, a ``Literal`` a
    choice; every value is passed on as typed (a comma list split), for the model to validate.
    """
    aliases = dict(aliases or {})
    unknown = sorted(set(aliases) - set(model.model_fields))
    if unknown:
        raise TypeError(f"aliases name no field of {model.__name__}: {', '.join(unknown)}")
    options = {
        name: _parameter(name, info, tuple(aliases.get(name, ())))
        for name, info in model.model_fields.items()
    }
    lists = {name for name, info in model.model_fields.items() if _is_str_list(info.annotation)}

    def decorate(fn: Callable[..., R]) -> Callable[..., R]:
        signature = inspect.signature(fn, eval_str=True)
        if param not in signature.parameters:
            raise TypeError(f"{fn.__name__} has no '{param}' parameter for the {model.__name__}")
        clash = sorted(set(options) & set(signature.parameters))
        if clash:
            raise TypeError(f"{fn.__name__}: parameters clash with fields: {', '.join(clash)}")
        # Keyword-only, so parameters with and without defaults may follow one another.
        parameters: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            if p.name == param:
                parameters.extend(options.values())
            else:
                parameters.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(fn)
        def command(**kwargs: Any) -> R:
            flags = {name: kwargs.pop(name, None) for name in options}
            for name in lists:
                if flags[name] is not None:
                    flags[name] = [m.strip() for m in flags[name].split(",") if m.strip()]
            return fn(**kwargs, **{param: flags})

        setattr(command, "__signature__", signature.replace(parameters=parameters))  # noqa: B010
        command.__annotations__ = {p.name: p.annotation for p in parameters} | {
            "return": signature.return_annotation
        }
        return command

    return decorate


def field_help(name: str, info: FieldInfo) -> str:
    """A field's description, its choices or range (as click shows them), and its default:
    ``LoRA rank [1<=x<=256] [default: 8]`` (rich-escaped)."""
    annotation = _unwrap_optional(info.annotation)
    if get_origin(annotation) is Literal:
        extra = "|".join(str(c) for c in get_args(annotation))
    elif _is_str_list(annotation):
        extra = "comma list"
    else:
        extra = _range(info.metadata)
    text = info.description or name.replace("_", " ")
    if extra:
        text += f" [{extra}]"
    default = info.get_default(call_default_factory=True)
    if isinstance(default, bool):
        text += f" [default: {'' if default else 'no-'}{option_name(name)[2:]}]"
    elif isinstance(default, tuple | list):
        text += f" [default: {','.join(str(d) for d in default)}]"
    elif default is not None:
        text += f" [default: {default}]"
    return escape(text)


def _parameter(name: str, info: FieldInfo, aliases: tuple[str, ...]) -> inspect.Parameter:
    annotation = _unwrap_optional(info.annotation)
    flag = option_name(name)
    decls: tuple[str, ...]
    if annotation is bool:
        kind: Any = bool
        decls = (f"{flag}/--no-{flag[2:]}", *aliases)
    elif get_origin(annotation) is Literal or _is_str_list(annotation):
        kind, decls = str, (flag, *aliases)
    elif annotation in _SCALARS:
        kind, decls = annotation, (flag, *aliases)
    else:
        raise TypeError(
            f"field '{name}' ({annotation}) has no command-line form: "
            "make it a number, str, bool, Literal or list of str"
        )
    option = typer.Option(*decls, help=field_help(name, info), show_default=False)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X`` (every option is optional: unset means "not given")."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_str_list(annotation: Any) -> bool:
    annotation = _unwrap_optional(annotation)
    args = get_args(annotation)
    return get_origin(annotation) in (list, tuple) and bool(args) and args[0] is str


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range(metadata: Sequence[Any]) -> str:
    """Pydantic's bounds as click writes a range: ``1<=x<=256``, ``0<x<=1``, ``x>=0``."""
    # Field(ge=1, le=256) puts annotated_types.Ge(ge=1) and Le(le=256) in the metadata.
    bounds = {
        op: _number(getattr(m, op))
        for m in metadata
        for op in ("ge", "gt", "le", "lt")
        if getattr(m, op, None) is not None
    }
    low = f"{bounds['ge']}<=" if "ge" in bounds else f"{bounds['gt']}<" if "gt" in bounds else ""
    high = f"<={bounds['le']}" if "le" in bounds else f"<{bounds['lt']}" if "lt" in bounds else ""
    if low and not high:  # x>=0 reads better than 0<=x
        return f"x>={bounds['ge']}" if "ge" in bounds else f"x>{bounds['gt']}"
    return f"{low}x{high}" if low or high else ""
