"""``imgflow-api``: serve the API with uvicorn on IMGFLOW_API_HOST:IMGFLOW_API_PORT."""

from __future__ import annotations

from imgflow.core.sigterm import exit_on_sigterm

exit_on_sigterm()  # first: the imports below take seconds, and a pod may be removed meanwhile

from types import FrameType

import uvicorn

from imgflow.api import stopping
from imgflow.api.protocol import with_header_timeout
from imgflow.core import logs
from imgflow.core.settings import get_settings


class Server(uvicorn.Server):
    """uvicorn, telling the application when it is asked to stop (imgflow.api.stopping)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        stopping.begin()
        super().handle_exit(sig, frame)


def main() -> None:
    settings = get_settings()
    logs.configure(settings.log_format)
    config = uvicorn.Config(
        "imgflow.api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        proxy_headers=True,
        access_log=False,
        log_config=None,  # uvicorn's loggers write through ours (imgflow.core.logs)
        http=with_header_timeout(settings.request_header_timeout_s),
        # open event streams (GET .../events) end by themselves (imgflow.api.stopping); this bounds
        # any other request a stopping API still serves
        timeout_graceful_shutdown=20,
    )
    Server(config).run()


if __name__ == "__main__":
    main()
