"""The code store: zip packages of functions and layers, content-addressed by SHA-256.

Run as ``python -m kubelambda.store`` (one replica, data on a PVC). Function pods' init
containers download their packages from it; the CLI or any HTTP client uploads them.

Environment:

================================  ================================================================
KUBELAMBDA_STORE_DIR              where blobs live, default ``/data``
KUBELAMBDA_STORE_PORT             HTTP port, default 8080
KUBELAMBDA_STORE_UPLOAD_TOKEN     bearer token for uploads, listing and deletion (required)
KUBELAMBDA_STORE_SIGNING_KEY      key of the per-blob read tokens the operator hands to pods
                                  (required)
KUBELAMBDA_STORE_MAX_BYTES        largest package accepted, default 52428800 (Lambda's 50 MB)
================================  ================================================================

HTTP API (JSON errors ``{"message": ...}``):

``PUT /v1/blobs/<sha256>`` - upload a zip whose SHA-256 is ``<sha256>`` (upload token). 201 new,
200 already stored; 400 digest mismatch or not a zip archive, 413 over the size limit.
``POST /v1/blobs`` - the same, the store computes the digest and answers it.
``GET|HEAD /v1/blobs/<sha256>`` - the package (upload token, or the read token of that blob:
hex HMAC-SHA256 of ``read:<sha256>`` under the signing key; it grants that blob only).
``GET /v1/blobs`` - list ``[{"sha256", "size"}]`` (upload token).
``DELETE /v1/blobs/<sha256>`` - remove (upload token).
``GET /healthz`` - 200.
"""
