"""One request per command: the API validates like the CLI, with the same one-line messages."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evit_deploy import api
from evit_deploy.errors import UsageError
from evit_deploy.requests import (
    BenchmarkRequest,
    DebugRequest,
    EvalRequest,
    ExportRequest,
    ProfileRequest,
    Request,
    SegmentRequest,
    VerifyRequest,
    flag_of,
)

MODEL = "efficientvit-b0-r224"
# Bad API calls (issue 14 item 12) and the line each must raise, the CLI's own words.
BAD_CALLS = [
    (api.export, (123,), {}, "MODEL takes text, got int 123"),
    (api.export, (None,), {}, "export needs MODEL"),
    (api.export, (MODEL,), {"weights": 42}, "--weights takes a path, got int 42"),
    (api.export, (MODEL,), {"out": 5}, "--out takes a path, got int 5"),
    (api.export, (MODEL,), {"seed": "x"}, "--seed takes a whole number, got 'x'"),
    (api.export, (MODEL,), {"resolution": "64x60"}, "resolution 64x60 is not a multiple of 32"),
    (api.export, (MODEL,), {"batch": 0}, "--batch must be at least 1 (got 0)"),
    (api.export, (MODEL,), {"name": "../escaped"}, "--name '../escaped' is not a file stem"),
    (api.export, (MODEL,), {"bogus": 1}, "unknown option 'bogus' for export"),
    (api.verify, (None,), {}, "verify needs ARTIFACT"),
    (api.verify, ("a.onnx",), {"tolerances": {"atol": -1}}, "--atol must be at least 0"),
    (api.verify, ("a.onnx",), {"samples": 0}, "--samples must be at least 1 (got 0)"),
    (api.profile, ("a.onnx",), {"iters": 2.5}, "--iters takes a whole number, got 2.5"),
    (api.profile, ("a.onnx",), {"threads": 0}, "--threads must be at least 1 (got 0)"),
    (api.profile, ("a.onnx",), {"warmup": -1}, "--warmup must be at least 0 (got -1)"),
]


@pytest.mark.parametrize(("call", "args", "kwargs", "message"), BAD_CALLS,
                         ids=[f"{c.__name__}-{m.split()[0]}-{i}" for i, (c, _, _, m) in enumerate(BAD_CALLS)])
def test_the_api_refuses_bad_arguments_in_one_line(call: Any, args: tuple, kwargs: dict, message: str,
                                                   tmp_path: Path) -> None:
    with pytest.raises(UsageError) as raised:
        call(*args, out=tmp_path / "out", **kwargs) if call is api.export and "out" not in kwargs \
            else call(*args, **kwargs)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()  # nothing was created for a refused request


def test_the_api_accepts_what_the_cli_accepts() -> None:
    request = ExportRequest.parse(model=MODEL, resolution="64x64", batch="2", seed="3")
    assert request.resolution == (64, 64) and request.batch == 2 and request.seed == 3
    assert ExportRequest.parse(model=MODEL, resolution=(64, 96)).resolution == (64, 96)
    assert VerifyRequest.parse(artifact="a.onnx", samples="4").samples == 4
    assert ProfileRequest.parse(artifact=Path("a.onnx"), threads="2").threads == 2


@pytest.mark.parametrize(("args", "message"), [
    (["export", MODEL, "--batch", "two"], "--batch takes a whole number, got 'two'"),
    (["export", MODEL, "--name", "a/b"], "--name 'a/b' is not a file stem"),
    (["verify", "a.onnx", "--atol", "-1"], "--atol must be at least 0"),
    (["profile", "a.onnx", "--iters", "2.5"], "--iters takes a whole number, got '2.5'"),
    (["profile", "a.onnx", "--threads", "0"], "--threads must be at least 1 (got '0')"),
    (["export"], "Missing argument 'MODEL'"),
])
def test_the_cli_says_the_same_in_one_line(cli, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and message in result.error_lines[0], result
    assert result.stderr.count("\n") == 1 and not result.stdout


def test_a_folder_given_as_weights_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="a folder, not a weights file"):
        ExportRequest.parse(model=MODEL, weights=tmp_path)


def test_every_request_field_is_a_flag() -> None:
    """A field added to a request is a CLI flag too, with its help (no second declaration). Read from the
    commands Typer builds, not from rendered help, whose layout depends on the terminal."""
    import typer

    from evit_deploy.cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for command, request_cls in (("export", ExportRequest), ("verify", VerifyRequest), ("profile", ProfileRequest),
                                 ("eval", EvalRequest), ("benchmark", BenchmarkRequest), ("segment", SegmentRequest),
                                 ("debug", DebugRequest)):
        group = commands[command]
        params = (group.commands["run"] if command == "benchmark" else group).params
        options = {flag.lower(): param for param in params
                   for flag in [*param.opts, *getattr(param, "secondary_opts", [])] if flag.startswith("-")}
        arguments = {param.name for param in params if param.param_type_name == "argument"}
        for name, field in request_cls.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if extra.get("cli", {}).get("hidden") or name == "tolerances":
                continue
            if extra.get("cli", {}).get("argument"):
                assert name in arguments, (command, name, sorted(arguments))
                continue
            flag = flag_of(request_cls, name).lower()
            assert flag in options, (command, name, sorted(options))
            assert (options[flag].help or "").strip(), (command, name)


def test_the_device_worker_gets_the_same_request() -> None:
    request = ProfileRequest.parse(artifact="m.onnx", threads=2, resolution="64x128", per_layer=True, power=True)
    assert ProfileRequest.model_validate_json(request.model_dump_json()) == request


values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=20), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2), st.just(Path("/nonexistent")))


@pytest.mark.parametrize("request_cls", [ExportRequest, VerifyRequest, ProfileRequest, EvalRequest, BenchmarkRequest,
                                         SegmentRequest])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_argument_is_a_request_or_one_usage_line(request_cls: type[Request], data: st.DataObject) -> None:
    """The Python API's argument boundary: whatever type a field is given, parsing gives a request or
    a one-line UsageError, never another exception."""
    first = {"ExportRequest": "model", "VerifyRequest": "artifact", "ProfileRequest": "artifact", "EvalRequest": "source",
             "BenchmarkRequest": "model", "SegmentRequest": "artifact"}[request_cls.__name__]
    fields = {first: data.draw(st.one_of(st.just("m.onnx"), values), label=first)}
    for name in data.draw(st.lists(st.sampled_from(sorted(request_cls.model_fields)), max_size=4, unique=True)):
        fields[name] = data.draw(values, label=name)
    try:
        request_cls.parse(**fields)
    except UsageError as err:
        assert str(err) and "\n" not in str(err)
