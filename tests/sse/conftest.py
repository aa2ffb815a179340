"""pytest entry point of the SSE suite: fixtures and failure-log hooks live in harness.py."""

from .harness import (  # noqa: F401  (fixtures and hooks are picked up by name)
    blob_backend_scan,
    bucket,
    kms,
    node,
    plain_bucket,
    plain_node,
    plain_s3,
    pytest_runtest_makereport,
    pytest_runtest_setup,
    s3,
    start_node,
    strict_node,
    tls_pair,
)
