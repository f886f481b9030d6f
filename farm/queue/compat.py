"""Work-arounds for library bugs the chaos run found (each with the evidence).

kombu 5.7, Redis transport: after the broker connection is lost, Celery closes the connection a
second time; the channel then tries to restore its unacknowledged messages through a client it
can no longer build (``AttributeError: 'NoneType' object has no attribute 'hostname'`` in
``Channel._connparams``) and the worker dies with "Unrecoverable error" instead of reconnecting
(seen in ``python -m devtools chaos`` on a Redis restart). Restoring cannot succeed at that point
anyway (Redis is gone); the messages stay in kombu's ``unacked`` hash and are restored by the
visibility-timeout sweep, so the error is logged and the reconnect goes on.

The same dead channel also breaks the acknowledgement of a task that finished after the
reconnect (``'NoneType' object has no attribute 'client'`` in ``QoS.ack``), again killing the
worker. The unacknowledged message is restored after the visibility timeout and its redelivery is
a no-op (the video's completion marker exists), so the failed ack is logged, not fatal.
"""

from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)
_restore_unacked = kombu_redis.QoS.restore_unacked


def _restore_unacked_tolerant(self, client=None):
    try:
        return _restore_unacked(self, client)
    except AttributeError as exc:
        log.warning("broker connection already gone; unacknowledged messages will be restored "
                    "after the visibility timeout (%s)", exc)
        return None


_ack = kombu_redis.QoS.ack


def _ack_tolerant(self, delivery_tag):
    try:
        return _ack(self, delivery_tag)
    except AttributeError as exc:
        log.warning("cannot acknowledge %s on a channel closed by a broker reconnect; the message "
                    "is redelivered after the visibility timeout (%s)", delivery_tag, exc)
        return None


def apply() -> None:
    kombu_redis.QoS.restore_unacked = _restore_unacked_tolerant
    kombu_redis.QoS.ack = _ack_tolerant
