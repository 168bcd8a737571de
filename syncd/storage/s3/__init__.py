"""The ``s3`` storage: a signed HTTP/1.1 fast path for small objects, boto3 for multipart and bucket set-up."""

from syncd.storage.s3.storage import S3Storage

__all__ = ["S3Storage"]
