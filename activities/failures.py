"""activities: failures that fit — every activity failure a worker reports to Temporal carries a
bounded message and no chained causes.

Temporal keeps an activity's last failure (message, stack trace, and each cause with its
own) with the workflow, and past a few KB the server records "Failure exceeds size limit."
instead: an operator reading a send stuck on a down provider learns nothing. Providers
already bound their errors (activities.channels.base); this interceptor is the one place
that guarantees it for every activity and every error — a database error quoting a large
statement, an unexpected exception with a long repr. The full error, traceback and causes
included, still goes to the worker's log.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from activities.channels.base import MAX_MESSAGE_CHARS, bounded


class BoundedFailures(Interceptor):
    """Registered on every Nudge worker (worker.build)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Bounded(next)


class _Bounded(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await self.next.execute_activity(input)
        except ApplicationError as exc:
            if len(exc.message) <= MAX_MESSAGE_CHARS and exc.__cause__ is None:
                raise
            activity.logger.warning("activity failed: %s", exc, exc_info=True)
            raise ApplicationError(
                bounded(exc.message, MAX_MESSAGE_CHARS),
                type=exc.type,
                non_retryable=exc.non_retryable,
                next_retry_delay=exc.next_retry_delay,
                category=exc.category,
            ) from None
        except FailureError:
            raise  # cancellation and the SDK's own: small, and meant as they are
        except Exception as exc:
            # The same type name as the exception would have had: a retry policy's
            # non-retryable types match alike.
            activity.logger.warning("activity failed: %r", exc, exc_info=True)
            raise ApplicationError(
                bounded(f"{type(exc).__name__}: {exc}", MAX_MESSAGE_CHARS),
                type=type(exc).__name__,
            ) from None
