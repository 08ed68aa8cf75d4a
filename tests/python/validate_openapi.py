"""Validates the OpenAPI document on stdin with openapi-spec-validator (PyPI), which picks the
validator of the document's version (3.1 here). Prints "valid", or fails the run (exit 1) with
every error found."""
import json
import sys

from openapi_spec_validator import OpenAPIV31SpecValidator

document = json.load(sys.stdin)
errors = [str(e) for e in OpenAPIV31SpecValidator(document).iter_errors()]
if errors:
    sys.exit("\n\n".join(errors))
print("valid")
