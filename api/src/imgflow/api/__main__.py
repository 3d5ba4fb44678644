"""``imgflow-api``: serve the API with uvicorn on IMGFLOW_API_HOST:IMGFLOW_API_PORT."""

from __future__ import annotations

from imgflow.core.sigterm import exit_on_sigterm

exit_on_sigterm()  # first: the imports below take seconds, and a pod may be removed meanwhile

import uvicorn

from imgflow.api.protocol import with_header_timeout
from imgflow.core import logs
from imgflow.core.settings import get_settings


def main() -> None:
    settings = get_settings()
    logs.configure(settings.log_format)
    uvicorn.run(
        "imgflow.api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        proxy_headers=True,
        access_log=False,
        log_config=None,  # uvicorn's loggers write through ours (imgflow.core.logs)
        http=with_header_timeout(settings.request_header_timeout_s),
        # open event streams (GET .../events) would otherwise hold a stopping API forever
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
