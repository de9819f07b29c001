"""faceverify-client: a typed Python client for the faceverify service, sync and async.

from faceverify_client import Client

with Client("http://127.0.0.1:8000", api_key="fv_...") as fv:
    fv.enroll("ann", ["ann1.jpg", "ann2.jpg"])
    result = fv.verify("ann", "door-camera.jpg")
    print(result.match, result.score)
"""

from faceverify_client import errors, models
from faceverify_client._client import AsyncClient, Client, RetryPolicy
from faceverify_client.errors import FaceVerifyError

__all__ = ["AsyncClient", "Client", "FaceVerifyError", "RetryPolicy", "errors", "models"]
