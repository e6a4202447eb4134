"""The JSON Schema of the benchmark JSON, ``ac_bench/record.schema.json`` (draft 2020-12; installed
with the package): it describes exactly the record the code writes (``ac_bench.record.Measurement``,
the metric registry's nullability, the outcomes, the schema version), a real run's
``--benchmark-json`` validates against it, and a broken record does not."""

from __future__ import annotations

import copy
import dataclasses
import json
from importlib.resources import files

import pytest
from jsonschema import Draft202012Validator

from ac_bench.metrics import METRICS
from ac_bench.models import get_flavor
from ac_bench.record import OUT_OF_MEMORY, OUTCOMES, SCHEMA_VERSION, Measurement, _descriptive_record
from tests.helpers import run_pytest


def installed_schema() -> dict:
    """The schema as the installed package ships it (package data, not a path in the repository)."""
    return json.loads((files("ac_bench") / "record.schema.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema() -> dict:
    schema = installed_schema()
    Draft202012Validator.check_schema(schema)
    return schema


def record_validator(schema: dict) -> Draft202012Validator:
    """A validator of one record: ``$defs/measurement`` with the schema's ``$defs`` around it."""
    return Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/measurement"})


def test_schema_describes_exactly_the_record(schema):
    """The record's properties and required fields are exactly ``Measurement``'s dataclass
    fields, nothing else is allowed; every metric of the registry is a non-negative integer or
    null, and must be an integer where the step gave figures unless the registry declares it
    nullable; the outcomes and the schema version are the code's. A field or metric added to the
    code without the schema (or the other way round) fails here."""
    record = schema["$defs"]["measurement"]
    fields = [f.name for f in dataclasses.fields(Measurement)]
    assert sorted(record["properties"]) == sorted(fields)
    assert sorted(record["required"]) == sorted(fields)
    assert record["additionalProperties"] is False
    assert set(METRICS) <= set(fields)
    for name in METRICS:
        assert record["properties"][name]["$ref"] == "#/$defs/bytes", name
    assert schema["$defs"]["bytes"]["type"] == ["integer", "null"] and schema["$defs"]["bytes"]["minimum"] == 0
    assert record["if"] == {"properties": {"outcome": {"const": OUT_OF_MEMORY}}}
    assert sorted(record["else"]["properties"]) == sorted(n for n, m in METRICS.items() if not m.nullable)
    assert record["properties"]["outcome"]["enum"] == list(OUTCOMES)
    assert record["properties"]["schema_version"] == {"const": SCHEMA_VERSION}
    assert schema["properties"]["measurements"]["items"] == {"$ref": "#/$defs/measurement"}
    assert schema.get("additionalProperties", True) is True  # pytest-benchmark writes the rest


def test_real_run_validates(tmp_path, schema):
    """A real ``--benchmark-json`` of ``bench/test_memory.py`` (two tiny variants, one process)
    validates against the installed schema, and its records read back with ``Measurement.from_dict``."""
    out = tmp_path / "run.json"
    result = run_pytest("bench/test_memory.py", "--flavor", "tiny", "-k", "test_memory_record and (full-sdpa or none-eager)",
                        "--benchmark-json", str(out), "-m", "not distributed", "-q", timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert sorted(r["variant"] for r in data["measurements"]) == ["full-sdpa", "none-eager"]
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in Draft202012Validator(schema).iter_errors(data)]
    assert errors == []
    for record in data["measurements"]:
        assert Measurement.from_dict(record).as_dict() == record


def test_out_of_memory_record_validates(schema):
    """An out-of-memory record (null metrics, no attention kernel, an empty FLOP breakdown), as
    ``measure_variant`` writes it, validates; a metric cannot be null in an ``ok`` record
    unless the registry declares it nullable."""
    record = _descriptive_record(get_flavor("tiny"), "full-sdpa", "cpu", outcome=OUT_OF_MEMORY,
                                 outcome_note="CUDA out of memory. Tried to allocate 2.00 GiB").as_dict()
    validator = record_validator(schema)
    assert list(validator.iter_errors(record)) == []
    ok_with_nulls = {**record, "outcome": "ok"}
    failing = {e.absolute_path[0] for e in validator.iter_errors(ok_with_nulls)}
    assert failing == {n for n, m in METRICS.items() if not m.nullable}


@pytest.fixture(scope="module")
def good_record() -> dict:
    """A valid ``ok`` record, built without measuring (a descriptive record given figures)."""
    record = _descriptive_record(get_flavor("tiny"), "full-sdpa", "cpu").as_dict()
    record.update({name: 1000 for name in METRICS}, outcome="ok", attention_kernel="cpu_flash",
                  flops_by_op={"aten.mm": 1000})
    return record


def _without(record: dict, field: str) -> dict:
    return {k: v for k, v in record.items() if k != field}


@pytest.mark.parametrize(("breakage", "broken"), [
    ("a metric as a string", lambda r: {**r, "peak_bytes": "1000"}),
    ("a negative metric", lambda r: {**r, "flops": -1}),
    ("a nullable metric as a string", lambda r: {**r, "saved_bytes": "none"}),
    ("an unknown outcome", lambda r: {**r, "outcome": "crashed"}),
    ("a missing field", lambda r: _without(r, "attention_kernel")),
    ("a missing metric", lambda r: _without(r, "optimizer_step_peak_bytes")),
    ("an unknown field", lambda r: {**r, "peak_mib": 1.0}),
    ("another schema version", lambda r: {**r, "schema_version": 3}),
    ("a boolean as a count", lambda r: {**r, "batch": True}),
    ("a FLOP count by op as a float", lambda r: {**r, "flops_by_op": {"aten.mm": 1.5}}),
])
def test_broken_record_fails(schema, good_record, breakage, broken):
    """Each breakage of a valid record is caught by the schema (the valid record itself passes)."""
    validator = record_validator(schema)
    assert list(validator.iter_errors(good_record)) == []
    assert list(validator.iter_errors(broken(copy.deepcopy(good_record)))) != [], breakage


def test_broken_file_fails(schema, good_record):
    """The file level: ``measurements`` must be a list of records, ``time_ratios`` an object of
    positive ratio pairs; pytest-benchmark's own keys are allowed."""
    validator = Draft202012Validator(schema)
    good = {"machine_info": {}, "benchmarks": [], "measurements": [good_record],
            "time_ratios": {"cpu-tiny-full-sdpa": {"time_ratio": 1.3, "flop_ratio": 1.33}}}
    assert list(validator.iter_errors(good)) == []
    for broken in ({**good, "measurements": good_record}, _without(good, "measurements"),
                   {**good, "time_ratios": {"cpu-tiny-full-sdpa": {"time_ratio": 1.3}}},
                   {**good, "time_ratios": {"cpu-tiny-full-sdpa": {"time_ratio": 0, "flop_ratio": 1.0}}},
                   {**good, "measurements": [{**good_record, "outcome": None}]}):
        assert list(validator.iter_errors(broken)) != [], broken
