"""Validates custom resources (JobSet, Kueue, Prometheus Operator objects)
against the CustomResourceDefinitions vendored beside this file, the way an
API server with those CRDs installed and `kubectl apply --validate=strict`
would check them: the served version's openAPIV3Schema, with unknown
fields refused (the server would drop them silently, or refuse them under
strict field validation), plus the object metadata every server checks
(name, label keys and values).

Not evaluated: the CRDs' CEL rules (x-kubernetes-validations) and the
projects' admission webhooks; see README.md beside this file.

    python validate.py SCHEMA_DIR < documents.json     (a JSON list of objects)

Prints one line per problem; exits 1 if there is any, 0 otherwise.
"""

import copy
import json
import pathlib
import re
import sys

import jsonschema
import yaml

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def load_crds(directory):
    """(group, version, kind) -> the served version's schema."""
    schemas = {}
    for path in sorted(pathlib.Path(directory).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for v in spec["versions"]:
                if v.get("served"):
                    schemas[(spec["group"], v["name"], spec["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return schemas


def strict(schema):
    """A JSON Schema from a structural OpenAPI v3 schema, refusing unknown fields."""
    s = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.get("x-kubernetes-int-or-string") and "type" not in node:
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties", "not"):
            walk(node.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key, []):
                walk(child)

    walk(s)
    return s


def metadata_problems(meta):
    problems = []
    name = meta.get("name", "")
    if not name or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        problems.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
            problems.append(f"label key {key!r}: bad prefix")
        if not label or len(label) > 63 or not LABEL_NAME.match(label):
            problems.append(f"label key {key!r}: bad name")
        if not isinstance(value, str) or len(value) > 63 or not LABEL_NAME.match(value):
            problems.append(f"label {key}={value!r}: not a valid label value")
    for key, value in (meta.get("annotations") or {}).items():
        if not isinstance(value, str):
            problems.append(f"annotation {key}: {value!r} is not a string")
    return problems


def main():
    schemas = load_crds(sys.argv[1])
    documents = json.load(sys.stdin)
    problems = []
    for doc in documents:
        group, _, version = doc.get("apiVersion", "").rpartition("/")
        kind = doc.get("kind", "")
        what = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
        schema = schemas.get((group, version, kind))
        if schema is None:
            problems.append(f"{what}: no vendored CRD serves {doc.get('apiVersion')} {kind}")
            continue
        validator = jsonschema.Draft7Validator(strict(schema))
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in e.absolute_path) or "(root)"
            problems.append(f"{what}: {path}: {e.message}")
        problems += [f"{what}: {p}" for p in metadata_problems(doc.get("metadata", {}))]
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
