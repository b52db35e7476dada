"""Validation of custom resources against their controllers' real CRDs (tests/crds/), as the API
server does it: the structural schema's types, enums, patterns and required fields, and pruning (a
field the schema does not declare is dropped silently: here it is an error)."""

from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parent / "crds"


@lru_cache(maxsize=None)
def crd_schema(file: str, version: str) -> dict:
    """The openAPIV3Schema of `version` in a CRD file of tests/crds/."""
    crd = yaml.safe_load((CRDS / file).read_text())
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]
    raise KeyError(f"{file} serves no {version}")


def problems(doc: dict, file: str) -> list[str]:
    """What the API server would refuse in `doc`, and every field it would prune."""
    schema = crd_schema(file, doc["apiVersion"].rsplit("/", 1)[1])
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
             for e in jsonschema.Draft7Validator(_plain(schema)).iter_errors(doc)]
    return found + [f"{path}: pruned (not in the schema)" for path in _pruned(doc, schema, "")]


def _plain(schema):
    """The schema without Kubernetes' own keywords, and int-or-string made explicit."""
    if isinstance(schema, dict):
        out = {k: _plain(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if schema.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return out
    if isinstance(schema, list):
        return [_plain(s) for s in schema]
    return schema


def _pruned(value, schema: dict, path: str):
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-embedded-resource"):
        return
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if path == "" and key == "metadata":  # ObjectMeta: the API server's own
                continue
            if properties is not None and key in properties:
                yield from _pruned(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from _pruned(item, extra, f"{path}.{key}")
            elif properties is not None or extra is False:
                yield f"{path}.{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for k, item in enumerate(value):
            yield from _pruned(item, schema["items"], f"{path}[{k}]")
