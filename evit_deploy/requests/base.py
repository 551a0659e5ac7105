"""The request base: a field is a flag (type, bounds, default, help, names), errors are one line."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from typing_extensions import Self

from evit_deploy.configs import parse_resolution
from evit_deploy.errors import UsageError


def _resolution(value: Any) -> Any:
    """``"512x1024"``, ``"224"`` or ``(512, 1024)`` -> (H, W), checked like the CLI checks it."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_resolution(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                      for v in value):
        return parse_resolution(f"{value[0]}x{value[1]}")
    raise UsageError(f"--resolution takes HxW (e.g. 512x1024 or (512, 1024)), got {value!r}")


Resolution = Annotated[tuple[int, int] | None, BeforeValidator(_resolution)]


def _names(value: Any) -> Any:
    """``"encoder,decoder"`` -> ["encoder", "decoder"] (a list passes as it is)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()] or None
    return value


def _dims(value: Any) -> Any:
    """``"num_prompts=16,num_points=4"`` -> {"num_prompts": 16, "num_points": 4} (a mapping passes as it is)."""
    if not isinstance(value, str):
        return value
    dims: dict[str, Any] = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        name, sep, size = part.partition("=")
        if not sep or not name.strip() or not size.strip().isdigit():
            raise UsageError(f"--dims {value!r}: give NAME=SIZE pairs, e.g. num_prompts=16,num_points=4")
        dims[name.strip()] = int(size)
    return dims


def _path_text(value: Any) -> Any:
    """A path given as ``Path`` or text (an artifact, or a zoo name where the command takes one)."""
    return str(value) if isinstance(value, Path) else value


def cli(*flags: str, argument: bool = False, metavar: str | None = None, hidden: bool = False,
        as_type: type | None = None) -> dict[str, Any]:
    """How a field appears on the command line (``json_schema_extra`` of its ``Field``).

    ``flags``: the option names (default ``--field-name``); ``argument``: positional;
    ``hidden``: API only (not a flag); ``as_type``: the type the CLI parses before the request
    validates (``str`` for a resolution or a precision, so the request's message is the one shown).
    """
    return {"cli": {"flags": list(flags), "argument": argument, "metavar": metavar, "hidden": hidden,
                    "as_type": as_type}}


def flag_of(model: type[BaseModel], name: str) -> str:
    """The flag a field is given with (``threads`` -> ``--threads``), for messages."""
    field = model.model_fields.get(name)
    extra = (field.json_schema_extra if field is not None and isinstance(field.json_schema_extra, dict) else {}) or {}
    spec = extra.get("cli", {})
    if spec.get("argument"):
        return spec.get("metavar") or name.upper()
    flags = [f for f in spec.get("flags", []) if f.startswith("--")]
    return flags[0].split("/")[0] if flags else "--" + name.replace("_", "-")


class Request(BaseModel):
    """Validated once, immutable after: what a command was asked to do."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    command: ClassVar[str] = ""

    @classmethod
    def parse(cls, **fields: Any) -> Self:
        """Keyword arguments (the API's, or the CLI's parsed options) -> a request, or one UsageError line."""
        try:
            return cls.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as err:
            raise UsageError(describe_error(err, cls)) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed, validated again."""
        return type(self).parse(**{**self.model_dump(), **changes})



def describe_error(err: ValidationError, model: type[BaseModel]) -> str:
    """pydantic's first complaint as one line naming the flag, e.g. ``--threads must be at least 1 (got 0)``."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    kind, value, ctx = first["type"], first.get("input"), first.get("ctx") or {}
    command = getattr(model, "command", "") or "this command"
    if kind == "extra_forbidden":
        return f"unknown option {loc[-1]!r} for {command}; see `evit {command} --help`"
    if kind == "missing":
        return f"{command} needs {flag_of(model, loc[0]) if loc else 'more arguments'}; see `evit {command} --help`"
    sub = model.model_fields[loc[0]].annotation if loc and loc[0] in model.model_fields else None
    if len(loc) > 1 and isinstance(sub, type) and issubclass(sub, BaseModel):
        flag = flag_of(sub, loc[1])
    else:
        flag = flag_of(model, loc[0]) if loc else command
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        return f"{flag} must be {'at least' if kind == 'greater_than_equal' else 'more than'} {bound} (got {shown})"
    if kind in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        return f"{flag} must be {'at most' if kind == 'less_than_equal' else 'less than'} {bound} (got {shown})"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{flag} takes a whole number, got {shown}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"{flag} takes a number, got {shown}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{flag} takes true or false, got {shown}"
    if kind in ("string_type",):
        return f"{flag} takes text, got {type(value).__name__} {shown}"
    if kind in ("path_type",):
        return f"{flag} takes a path, got {type(value).__name__} {shown}"
    if kind == "enum":
        return f"{flag} {shown} is not one of {ctx.get('expected', '')}"
    if kind in ("dict_type", "model_type"):
        return f"{flag} takes a mapping of fields, got {type(value).__name__}"
    return f"{flag}: {first['msg']}"


def _existing_file(path: Path | None, flag: str, what: str) -> Path | None:
    if path is None:
        return None
    if path.is_dir():
        raise UsageError(f"{flag} {path}: a folder, not a {what} file; pass the file itself")
    if not path.is_file():
        raise UsageError(f"{path}: {what} file not found")
    return path


def _weights_of(path: Path | None, model: Any) -> Path | None:
    """``--weights`` of a zoo model: a missing file names where the model's official checkpoint is.

    A newcomer's first command names the official file they do not have yet; "not found" alone
    leaves them searching (issue 17)."""
    if path is not None and not path.exists() and isinstance(model, str):
        from evit_deploy import zoo

        try:
            source = zoo.get_card(model).checkpoint_source()
        except UsageError:
            source = None
        if source is not None:
            raise UsageError(f"{path}: weights file not found; {source}; or leave out --weights to try {model} "
                             "with random weights")
    return _existing_file(path, "--weights", "weights")


UNBOUNDED = 2**31  # an image size no prompt reaches: checks a prompt file's form before the images are known
Seed = Annotated[int, Field(ge=0)]
Threads = Annotated[int | None, Field(ge=1)]


class ZooModelRequest(Request):
    """A command on a zoo model (``model``) and its checkpoint (``weights``): the two checked once here."""

    @field_validator("model", check_fields=False)
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not value.strip():
            raise UsageError("MODEL is empty; give a zoo name (see `evit models`)")
        return value

    @field_validator("weights", check_fields=False)
    @classmethod
    def _weights(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _weights_of(value, info.data.get("model"))
