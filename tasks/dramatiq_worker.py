"""What ``dramatiq tasks.dramatiq_worker`` loads: this process's broker, made once and handed to Dramatiq (its
command line reads the broker from ``dramatiq.get_broker()``)."""

from __future__ import annotations

import dramatiq

from tasks.backend import make_backend

broker = make_backend("dramatiq").broker
dramatiq.set_broker(broker)
