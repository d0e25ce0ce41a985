"""A classifier service that learns while it serves (``perennial serve``).

``perennial serve --model DIR [--encoder text|image|identity] [--host 127.0.0.1] [--port 8000]
[--keys FILE]`` serves a versioned JSON API (its OpenAPI document is at ``/openapi.json``, and
``/docs`` renders it):

======================================  ======  =================================================
route                                   role    what
======================================  ======  =================================================
``POST /v1/predict``                    read    ``{"inputs", "top"?, "min_version"?}`` -> version
                                                and per input: label (null if unknown), score,
                                                unknown, top, novelty, review_id
``POST /v1/learn``                      write   ``{"inputs", "labels"}`` -> ``{"version",
                                                "learned"}`` once the update is on disk
``POST /v1/unlearn``                    write   the same body; removes those examples
``GET /v1/classes``                     read    classes and their example counts
``DELETE /v1/classes/{label}``          write   forgets a class
``GET /v1/review``                      write   inputs predicted unknown, with what was said
``POST /v1/review/{id}``                write   ``{"label"}``: learns the input, deletes the item
``DELETE /v1/review/{id}``              write   discards the item
``GET /v1/model``                       read    versions, encoder, head, counts, state size
``GET /healthz``                        --      liveness, versions, failing background tasks
``GET /metrics``                        read    Prometheus text format
======================================  ======  =================================================

A text model also serves the support desk (:mod:`~perennial.service.desk`): ``/chat`` for
customers and ``/console`` for operators, over ``/v1/chat`` and ``/v1/desk/...`` routes.

Inputs are texts (``text``), base64-encoded images (``image``) or lists of numbers
(``identity``). Keys are sent as ``Authorization: Bearer KEY``; the keys file holds ``KEY ROLE``
lines (roles ``read`` and ``write``; write implies read). Without a keys file no key is asked
and the service refuses to listen on anything but a loopback address. Errors are JSON
``{"error": message}`` with a 4xx status; a refused request changes nothing.

Modules: :mod:`~perennial.service.journal` (the append-only, checksummed journal),
:mod:`~perennial.service.store` (durable versioned updates, recovery, published read-only
versions), :mod:`~perennial.service.app` (the FastAPI application),
:mod:`~perennial.service.server` (the ``serve`` entry point), :mod:`~perennial.service.auth`,
:mod:`~perennial.service.review`, :mod:`~perennial.service.metrics`,
:mod:`~perennial.service.batching` and :mod:`~perennial.service.waiters` (predictions waiting
for a ``min_version``, on the event loop). FastAPI and uvicorn
(``pip install 'perennial[service]'``) are imported by the app and server modules only.
"""

from perennial.service.journal import Journal, Record
from perennial.service.store import ModelStore, ServedModel

__all__ = ["Journal", "ModelStore", "Record", "ServedModel"]
