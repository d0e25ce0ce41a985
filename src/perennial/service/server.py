"""``perennial serve``: open the model directory, check the security settings, run uvicorn."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from typing import Any

from perennial.exceptions import EncoderError, InvalidParameterError
from perennial.service.auth import KeyRing
from perennial.service.review import ReviewQueue
from perennial.service.store import ModelStore

__all__ = ["is_loopback", "serve"]

logger = logging.getLogger("perennial.service")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine.

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    model: str | os.PathLike[str],
    *,
    encoder: str | None = None,
    encoder_params: dict[str, Any] | None = None,
    head: str | None = None,
    head_params: dict[str, Any] | None = None,
    unknown_rate: float | None = None,
    pretrained: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    keys_file: str | os.PathLike[str] | None = None,
    limits: Any = None,
    review_ttl: float = 3600.0,
    snapshot_every: int = 256,
    background_nice: int = 0,
    background_idle: bool = False,
    log_level: str = "info",
    shutdown_seconds: float = 10.0,
) -> int:
    """Serve the model directory ``model`` until interrupted; returns the exit status.

    Without ``keys_file`` nobody is asked for a key, so only a loopback ``host`` is accepted.
    A shutdown (SIGINT, SIGTERM) takes about ``shutdown_seconds`` at most: updates are refused
    and waits for a ``min_version`` end at once (503), requests under way get a third of the
    time to finish, and the refresher the rest to write a last snapshot (see
    :meth:`ModelStore.close`). Whatever is not in a snapshot then, or after a crash, is in the
    journal, which the next start replays. ``pretrained`` keeps a pretrained classifier
    beside a new model's head (see :meth:`ModelStore.open`).
    """
    import uvicorn

    from perennial.service.app import Limits, create_app

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidParameterError(f"port must be between 0 and 65535, got {port!r}")
    keys = KeyRing.from_file(keys_file) if keys_file is not None else None
    if keys is None and not is_loopback(host):
        raise InvalidParameterError(
            f"refusing to listen on {host!r} without --keys: anyone who can reach it could "
            "change the model; give a keys file or listen on 127.0.0.1"
        )
    limits = limits if limits is not None else Limits()
    for name, value in [*vars(limits).items(), ("shutdown_seconds", shutdown_seconds)]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InvalidParameterError(f"{name} must be a positive number, got {value!r}")
    if encoder == "image" or pretrained is not None:
        try:
            import PIL  # noqa: F401 - decodes the base64 images of requests
        except ImportError as error:
            raise EncoderError(
                f"serving images needs Pillow (pip install pillow): {error}"
            ) from error
    review = ReviewQueue(ttl=review_ttl)
    store = ModelStore.open(
        model,
        encoder=encoder,
        encoder_params=encoder_params,
        head=head,
        head_params=head_params,
        unknown_rate=unknown_rate,
        pretrained=pretrained,
        snapshot_every=snapshot_every,
        background_nice=background_nice,
        background_idle=background_idle,
        log_level=log_level,
    )

    stopping_at: list[float] = []  # when the shutdown began (time.monotonic())

    class Server(uvicorn.Server):
        """uvicorn's server, which starts closing the store as soon as it is asked to stop."""

        async def shutdown(self, sockets: Any = None) -> None:
            stopping_at.append(time.monotonic())
            store.begin_close()  # refuse updates, end the waits for a min_version
            await super().shutdown(sockets)

    def shut_down() -> None:
        started = stopping_at[0] if stopping_at else time.monotonic()
        store.close(timeout=max(1.0, shutdown_seconds - (time.monotonic() - started)))

    try:
        app = create_app(
            store,
            keys=keys,
            limits=limits,
            review=review,
            on_shutdown=shut_down,
        )
        logger.info(
            "serving %s (version %d, encoder %s) on http://%s:%d%s",
            model,
            store.version,
            store.encoder.name,
            host,
            port,
            "" if keys is not None else " without API keys (loopback only)",
        )
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=max(1, round(shutdown_seconds / 3)),
        )
        server = Server(config)
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C
            server.run()
        if not server.started:
            return 3  # uvicorn's status for a failed start (it logged why)
    finally:
        shut_down()  # after a failed start; closing twice does nothing
    return 0
